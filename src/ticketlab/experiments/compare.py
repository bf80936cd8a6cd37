"""Every method side by side on one training recipe: IMP, pruning at init, dynamic sparse training.

`compare` runs (or resumes) one sub-experiment per method inside ``out``::

    out/config.json            the comparison's resolved config
    out/imp/                   an IMP run (`ticketlab imp` layout), enough rounds to reach the
                               smallest density; each target density reads the nearest round
    out/<method>/              a `SparseExperiment` run (prune-init or sparse-train layout)
    out/compare.csv, compare.md, compare.json, compare.png

Each sub-directory is a full run directory of its own, so finished cells are never recomputed
and any cell can be inspected with `ticketlab report out/<method>`.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import validate
from ..data import DataSplits
from ..densities import DISTRIBUTIONS
from ..errors import TicketlabError
from ..flops import network_cost
from ..lottery import IMPConfig, IMPExperiment
from ..groups import GroupLayout
from ..lottery.imp import layer_rates
from ..lottery.schedules import planned_densities
from ..masks import Mask
from ..files import atomic_path, write_json
from ..flags import config_json, floats_parser, names_parser, setting
from ..run_config import RunConfig
from ..select import keep_counts_after_pruning
from ..structure.granularity import HELP as GRANULARITY_HELP
from ..structure.granularity import Granularity, is_unstructured
from ..targets import prunable_parameters
from ..units.base import layout_for
from .sparse import (DST_FLAGS, DST_METHODS, PAI_METHODS, PruneInitConfig, SparseExperiment, SparseTrainConfig,
                     density_label)
from ..units import Experiment, ProgressFactory, WorkerSetting

METHODS: tuple[str, ...] = ("imp", *PAI_METHODS, *DST_METHODS)
#: Pruning-at-init scorers rank globally (as their papers do); random, RigL and SET use `distribution`.
GLOBAL_SCORERS: tuple[str, ...] = ("snip", "grasp", "synflow", "magnitude")


@dataclass(frozen=True)
class CompareConfig(RunConfig):
    """Which methods, at which densities, on which model and data, with one training recipe."""

    methods: tuple[str, ...] = setting(("imp", "snip", "grasp", "synflow", "random", "rigl", "set"),
                                       parse=names_parser("--methods"), help="Comma list of methods to compare.")
    densities: tuple[float, ...] = setting((0.2, 0.05, 0.01), name="--density", parse=floats_parser("--density"),
                                           help="Comma list of target densities (fractions of the weights kept).")
    distribution: str = setting("erk", choices=lambda: DISTRIBUTIONS,
                                help="Layer-wise densities for random, RigL and SET (the PaI scorers rank globally).")
    imp_rate: float = setting(0.2, name="--rate", type=float, help="IMP's pruning rate per round.")
    granularity: Granularity = setting(Granularity(), parse=Granularity.parse, shown="unstructured",
                                       omit=is_unstructured,
                                       help=f"{GRANULARITY_HELP} For the static methods (imp and the prune-init "
                                            "scorers); --density still counts weights.")
    update_every: str = setting("100it", **DST_FLAGS["update_every"])
    alpha: float = setting(0.3, **DST_FLAGS["alpha"])
    end_fraction: float = setting(0.75, **DST_FLAGS["end_fraction"])

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "granularity", Granularity.parse(self.granularity))
        object.__setattr__(self, "densities", tuple(sorted((float(d) for d in self.densities), reverse=True)))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise TicketlabError(f"Unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}.")
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise TicketlabError("--methods needs at least one method, each listed once.")
        if self.distribution not in DISTRIBUTIONS:
            raise TicketlabError(f"Unknown density distribution {self.distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}.")
        if not self.densities:
            raise TicketlabError("--density needs at least one density.")
        for d in self.densities:
            validate.fraction(d, "A density in --density")
        self.sub_configs()  # building every sub-config validates the rest

    def sub_configs(self) -> dict[str, PruneInitConfig | SparseTrainConfig | IMPConfig]:
        """The config of every method's sub-experiment (IMP's rounds are set in `CompareExperiment`)."""
        common = dict(model=self.model, width=self.width, data=self.data, data_dir=self.data_dir, seeds=self.seeds,
                      val_fraction=self.val_fraction, split_seed=self.split_seed, train=self.train)
        out: dict[str, Any] = {}
        for method in self.methods:
            if method == "imp":
                out[method] = IMPConfig(rate=self.imp_rate, controls=(), rounds=0, granularity=self.granularity,
                                        **common)
            elif method in DST_METHODS:
                out[method] = SparseTrainConfig(method=method, densities=self.densities, distribution=self.distribution,
                                                update_every=self.update_every, alpha=self.alpha,
                                                end_fraction=self.end_fraction, granularity=self.granularity, **common)
            else:
                scope = "global" if method in GLOBAL_SCORERS else "layer"
                spread = "uniform" if scope == "global" or self.granularity.coupled else self.distribution
                out[method] = PruneInitConfig(method=method, densities=self.densities, scope=scope, distribution=spread,
                                              allow_collapse=True, granularity=self.granularity, **common)
        return out

    def to_json(self) -> dict[str, Any]:
        dst = any(m in DST_METHODS for m in self.methods)
        return config_json(self, leave_out=() if dst else ("update_every", "alpha", "end_fraction"))


def imp_round_densities(config: IMPConfig, model: torch.nn.Module, smallest: float, limit: int = 200,
                        layout: GroupLayout | None = None) -> list[float]:
    """Overall density after each IMP round (index = round) until it falls to ``smallest`` or below
    (with a ``layout`` of groups: or until the next round would empty a layer)."""
    if layout is not None:
        return _group_round_densities(config, model, smallest, limit, layout)
    params = prunable_parameters(model, ignore=config.ignore)
    mask = Mask.ones_like(params)
    names = list(mask)
    overrides = layer_rates(config, model, names)
    rates = {n: overrides.get(n, config.rate) for n in names}
    densities = [1.0]
    counts = {n: t.numel() for n, t in mask.items()}
    total = sum(counts.values())
    while densities[-1] > smallest and len(densities) <= limit:
        current = Mask({n: torch.arange(t.numel()).view(t.shape) < counts[n] for n, t in mask.items()})
        counts = keep_counts_after_pruning(current, rates)
        densities.append(sum(counts.values()) / total)
    return densities


def _group_round_densities(config: IMPConfig, model: torch.nn.Module, smallest: float, limit: int,
                           layout: GroupLayout) -> list[float]:
    names = list(prunable_parameters(model, ignore=config.ignore))
    densities = [1.0]
    while densities[-1] > smallest and len(densities) <= limit:
        try:
            plan = planned_densities(config, model, names, [config.rate] * len(densities), layout)
        except TicketlabError:   # one more round would empty a layer: the sparsest IMP gets
            break
        if plan is None:    # global scope: the split over layers is known only after training
            raise TicketlabError("compare runs IMP with --scope layer; at this granularity a global IMP round's "
                                 "density is known only after training.")
        densities.append(plan[-1])
    return densities


def nearest_round(round_densities: list[float], target: float) -> int:
    """The pruned round whose density is closest to ``target`` on a log scale."""
    return min(range(1, len(round_densities)), key=lambda r: abs(math.log(round_densities[r] / target)))


@dataclass
class CompareExperiment(Experiment):
    """A `CompareConfig` bound to its directory; each method runs as a sub-experiment inside it."""

    config: CompareConfig

    growing_lists = ("seeds", "densities", "methods")
    #: The DST settings are stored once a DST method runs: added with RigL or SET, they appear.
    appearing_keys = ("update_every", "alpha", "end_fraction")

    @classmethod
    def kind_of(cls, config: CompareConfig) -> str:
        return "compare"

    @classmethod
    def check(cls, config: CompareConfig, data: DataSplits, model: torch.nn.Module) -> None:
        """Every method's own checks (e.g. enough RigL / SET mask updates) before anything runs; the
        methods share the model, so each checks the same `probe`."""
        for method, sub in config.sub_configs().items():
            (IMPExperiment if method == "imp" else SparseExperiment).check(sub, data, model)

    def imp_config(self) -> IMPConfig:
        base = self.config.sub_configs()["imp"]
        model = self.new_model(0)
        rounds = len(imp_round_densities(base, model, min(self.config.densities),
                                         layout=layout_for(base, self.data, model))) - 1
        return IMPConfig(**{**base.__dict__, "rounds": rounds})

    #: The independent parts of a comparison: its (method, seed) cells.
    unit_name = "cells (methods x seeds)"

    @classmethod
    def independent_units(cls, config: CompareConfig) -> int:
        return len(config.methods) * len(config.seeds)

    def execute(self) -> dict[str, Any]:
        """Run or resume every method, then write the tables and the plot; return the table rows.

        Each method is a run of its own under ``OUT/<method>``, claimed here; all their (method,
        seed) cells go to the workers together, so ``--workers`` / ``--cluster`` spread the whole
        comparison, not one method at a time.
        """
        runs = self.method_runs()
        try:
            for run in runs.values():
                run.write_model_spec()
                run.before_parts()
            self.run_parts([part for run in runs.values() for part in run.parts()],
                           local={str(run.out): run for run in runs.values()})
            summaries = {method: run.write_summary() for method, run in runs.items()}
        finally:
            for run in runs.values():
                run.release()
        rows = self.rows(summaries)
        self.write_outputs(rows)
        return {"config": self.config.to_json(), "rows": rows}

    def method_runs(self) -> dict[str, Experiment]:
        """Every method's run, claimed (in this process) under ``OUT/<method>``."""
        runs: dict[str, Experiment] = {}
        kwargs = dict(device=self.device, data=self.data, progress=self.progress, stack=self.stack)
        for method, sub in self.config.sub_configs().items():
            if method == "imp":
                runs[method] = IMPExperiment.prepare(self.imp_config(), self.out / method, **kwargs)
            else:
                runs[method] = SparseExperiment.prepare(sub, self.out / method, **kwargs)
            runs[method].workers = self.workers  # its seeds are parts of this comparison's work
        return runs

    # --- the table -----------------------------------------------------------------------------
    def _cost(self, mask_path: Path) -> tuple[float, float]:
        model = self.new_model(0)
        cost = network_cost(model, self.data.input_shape, Mask.load(mask_path))
        return cost.params_ratio, cost.macs_ratio

    def rows(self, summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """One row per (method, target density) plus a dense row when IMP ran."""
        rows: list[dict[str, Any]] = []
        seed0 = self.config.seeds[0]
        if "imp" in summaries:
            dense = summaries["imp"]["rounds"][0]
            rows.append(self._row("dense", 1.0, dense, (1.0, 1.0)))
            round_densities = [e["density"] for e in summaries["imp"]["rounds"]]
            for target in self.config.densities:
                r = nearest_round(round_densities, target)
                mask_path = self.out / "imp" / f"seed-{seed0}" / f"round-{r:02d}" / "mask.safetensors"
                rows.append(self._row("imp", target, summaries["imp"]["rounds"][r], self._cost(mask_path), imp_round=r))
        for method, summary in summaries.items():
            if method == "imp":
                continue
            for entry in summary["rounds"]:
                target = entry["target_density"]
                mask_path = self.out / method / f"seed-{seed0}" / density_label(target) / "mask.safetensors"
                rows.append(self._row(method, target, entry, self._cost(mask_path)))
        return rows

    @staticmethod
    def _row(method: str, target: float, entry: dict[str, Any], cost: tuple[float, float], **extra: Any) -> dict[str, Any]:
        return {
            "method": method, "target_density": target, "density": entry["density"],
            "test_accuracy": entry["test_accuracy"], "test_accuracy_std": entry["test_accuracy_std"],
            "early_stop_iteration": entry["early_stop_iteration"], "params_ratio": cost[0], "flops_ratio": cost[1],
            "collapsed_layers": entry["collapsed_layers"], "seeds": len(entry["seeds"]), **extra,
        }

    def write_outputs(self, rows: list[dict[str, Any]]) -> None:
        write_json(self.out / "compare.json", {"config": self.config.to_json(), "rows": rows})
        buffer = io.StringIO()
        fields = ["method", "target_density", "density", "test_accuracy", "test_accuracy_std",
                  "early_stop_iteration", "params_ratio", "flops_ratio", "collapsed_layers", "seeds"]
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "collapsed_layers": ";".join(row["collapsed_layers"])})
        with atomic_path(self.out / "compare.csv") as tmp:
            tmp.write_text(buffer.getvalue())
        with atomic_path(self.out / "compare.md") as tmp:
            tmp.write_text(format_compare(rows, self.config) + "\n")
        plot_compare(rows, self.config, self.out / "compare.png", masks=self.overlap_masks(rows))

    def overlap_masks(self, rows: list[dict[str, Any]]) -> dict[float, dict[str, Path]]:
        """Target density -> method -> the first seed's mask file, for the overlap heat-maps.

        IMP gives the mask of the round nearest the target (the row's ``imp_round``); RigL / SET
        give the mask they ended training with (`resolve_mask_path` prefers ``final_mask``).
        """
        from ..analysis.mask_files import resolve_mask_path

        seed_dir = f"seed-{self.config.seeds[0]}"
        out: dict[float, dict[str, Path]] = {}
        for row in (r for r in rows if r["method"] != "dense"):
            cell = (self.out / "imp" / seed_dir / f"round-{row['imp_round']:02d}" if row["method"] == "imp"
                    else self.out / row["method"] / seed_dir / density_label(row["target_density"]))
            out.setdefault(row["target_density"], {})[row["method"]] = resolve_mask_path(cell)
        return out


def format_compare(rows: list[dict[str, Any]], config: CompareConfig) -> str:
    """A markdown table: accuracy (mean ± std over seeds), density, params and FLOPs vs dense."""
    lines = [f"{config.model} on {config.data}, {len(config.seeds)} seed(s), {config.train.steps} per run "
             f"({config.train.optimizer}, lr {config.train.lr:g}, batch {config.train.batch_size})", "",
             "| method | target | % left | test acc (%) | params vs dense | FLOPs vs dense | collapsed layers |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        collapsed = ", ".join(r["collapsed_layers"]) or "-"
        lines.append(f"| {r['method']} | {100 * r['target_density']:g}% | {100 * r['density']:.2f} | "
                     f"{r['test_accuracy']:.2f} ± {r['test_accuracy_std']:.2f} | {r['params_ratio']:.3f} | "
                     f"{r['flops_ratio']:.3f} | {collapsed} |")
    return "\n".join(lines)


def compare_figure(rows: list[dict[str, Any]], config: CompareConfig,
                   masks: dict[float, dict[str, Path]] | None = None) -> Any:
    """Test accuracy vs % of weights remaining (log x ticked in percentages, dense on the left),
    one line per method with a band of ± the sample std, the dense accuracy as a dashed line.

    With ``masks`` (see `CompareExperiment.overlap_masks`), a second row holds one heat-map per
    target density: the Jaccard overlap of the methods' masks (do the methods keep the same weights?).
    """
    from ..plotting import dense_line, legend_outside, line_with_spread, percent_axis, pyplot, spread_label

    plt = pyplot()
    panels = {t: m for t, m in (masks or {}).items() if len(m) > 1}
    fig = plt.figure(figsize=(max(9.0, 4.4 * len(panels)), 9.0 if panels else 4.8))
    grid = fig.add_gridspec(2 if panels else 1, max(1, len(panels)))
    ax = fig.add_subplot(grid[0, :])
    _draw_method_overlap(fig, grid, panels)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for index, method in enumerate(m for m in methods if m != "dense"):
        points = sorted((r for r in rows if r["method"] == method), key=lambda r: -r["density"])
        line_with_spread(ax, [100 * p["density"] for p in points], [p["test_accuracy"] for p in points],
                         [p["test_accuracy_std"] for p in points], method, index)
    for row in (r for r in rows if r["method"] == "dense"):
        dense_line(ax, row["test_accuracy"])
    percent_axis(ax, [100 * r["density"] for r in rows])
    ax.set_ylabel("test accuracy (%)")
    legend_outside(ax)
    names = ", ".join(m for m in methods if m != "dense")
    ax.set_title(f"{names}: {config.model} on {config.data} ({spread_label(len(config.seeds))})", fontsize=10)
    return fig


def plot_compare(rows: list[dict[str, Any]], config: CompareConfig, path: Path,
                 masks: dict[float, dict[str, Path]] | None = None) -> Path:
    """Write `compare_figure` as a PNG at ``path``."""
    from ..plotting import save

    return save(compare_figure(rows, config, masks), path)


def _draw_method_overlap(fig: Any, grid: Any, panels: dict[float, dict[str, Path]]) -> None:
    """One Jaccard heat-map of the methods' masks per target density, in the grid's second row."""
    from ..analysis.overlap import overlap_matrix
    from ..analysis.overlap_plots import draw_heatmap

    for column, (target, paths) in enumerate(panels.items()):
        matrix = overlap_matrix({method: Mask.load(p) for method, p in paths.items()})
        draw_heatmap(fig.add_subplot(grid[1, column]), matrix, f"mask Jaccard at {100 * target:g}%")


def run_compare(config: CompareConfig, out: str | Path, *, device: torch.device | str = "cpu",
                data: DataSplits | None = None, progress: ProgressFactory | None = None,
                stack: str | int = "auto", workers: WorkerSetting | None = None) -> dict[str, Any]:
    """Run (or resume) the comparison into ``out``; return ``{"config", "rows"}`` (``stack``: how
    many networks train together within each method, see `ticketlab.units.StackSetting`;
    ``workers``: processes or a Dask cluster for the cells, see `ticketlab.units.WorkerSetting`)."""
    return CompareExperiment.prepare(config, out, device=device, data=data, progress=progress, stack=stack,
                                     workers=workers).run()
