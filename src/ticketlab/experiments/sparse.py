"""Sparse networks trained once at a fixed density: pruning at init and dynamic sparse training.

* ``kind="prune-init"``: score the network at θ0 (SNIP, GraSP, SynFlow, magnitude, random), keep
  the requested density, train the masked network from θ0. Controls (Frankle et al. 2021's sanity
  checks): ``shuffle`` (the mask permuted within each layer), ``reinit`` (same mask, fresh init),
  ``invert`` (keep the lowest-scoring weights instead).
* ``kind="sparse-train"``: start from a random mask with a layer-wise distribution (ERK or
  uniform) and let RigL or SET move it during training at constant per-layer density. Control
  ``static``: the same initial mask trained without updates.

Layout of a run directory (every file atomic; finished units are never recomputed)::

    config.json  metrics.jsonl  summary.json
    seed-<s>/init.safetensors                      θ0 (the same θ0 as an IMP run of that seed)
    seed-<s>/density-<d>/mask.safetensors          the mask trained (DST: the initial mask)
    seed-<s>/density-<d>/scoring.json              scoring time, collapsed layers
    seed-<s>/density-<d>/{weights.safetensors, result.json, checkpoint.safetensors, final_mask.safetensors}
    seed-<s>/density-<d>/controls/<name>/          the same files for each control

``summary.json`` has the fields of an IMP summary, with one entry per density in ``rounds``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import validate
from ..data import DataSplits
from ..densities import DISTRIBUTIONS
from ..errors import TicketlabError
from ..masks import Mask
from ..methods.dynamic import DST_METHODS, DSTConfig, check_update_count
from ..methods.updaters import make_updater
from ..methods.pai import PAI_METHODS
from ..files import read_json, write_json
from ..flags import config_json, floats_parser, names_parser, setting
from ..run_config import RunConfig
from ..seeding import derive_seed
from ..targets import prunable_parameters
from ..train import iterations_per_epoch
from ..train.config import MAX_BATCH
from ..units.aggregate import write_summary_files
from ..lottery.controls import shuffled_mask
from ..structure.granularity import HELP as GRANULARITY_HELP
from ..structure.granularity import Granularity, is_unstructured
from ..units import Experiment, ProgressFactory, UnitJob, WorkerSetting, aggregate_units, load_state, save_state
from ..units.base import layout_for
from .scoring import MaskKey, MaskScorer, ScoredMask

KINDS: tuple[str, ...] = ("prune-init", "sparse-train")
CONTROLS: dict[str, tuple[str, ...]] = {"prune-init": ("shuffle", "reinit", "invert"), "sparse-train": ("static",)}


def density_label(density: float) -> str:
    """Directory name of one density: ``density-0.05``."""
    return f"density-{density:g}"


DST_FLAGS = {
    "update_every": dict(help="RigL / SET: ΔT between mask updates (a step such as 100it); a run must make at least "
                              "4 updates."),
    "alpha": dict(type=float, help="RigL / SET: initial drop fraction (cosine-decayed)."),
    "end_fraction": dict(type=float, help="RigL / SET: stop updating the mask after this fraction of training (T_end)."),
}


@dataclass(frozen=True)
class _SparseRun(RunConfig):
    """What pruning at init and dynamic sparse training share: a method, one or more target
    densities and how they spread over the layers.

    ``scope`` and ``distribution`` say how the density is spread: ``global`` ranks all layers
    together (pruning at init only), ``layer`` gives each layer the density of ``distribution``
    (``uniform``, ``er``, ``erk``).
    """

    KIND: ClassVar[str] = ""
    METHODS: ClassVar[tuple[str, ...]] = ()
    CONTROLS: ClassVar[tuple[str, ...]] = ()
    #: Train a mask that prunes a whole layer (prune-init's --allow-collapse; never for DST).
    allow_collapse: ClassVar[bool] = False

    method: str = ""
    densities: tuple[float, ...] = setting((0.05,), name="--density", parse=floats_parser("--density"), shown=None,
                                           help="Fraction of prunable weights kept; a comma list runs several.")
    scope: str = "global"
    distribution: str = "uniform"
    ignore: tuple[str, ...] = setting((), multiple=True, parse=tuple, metavar="PATTERN",
                                      help="Parameters never pruned; repeatable.")
    controls: tuple[str, ...] = ()
    dense: bool = setting(False, name="--dense/--no-dense", shown=True, omit=lambda value: not value,
                          help="Also train the dense network from θ0 once per seed: the baseline of the table and "
                               "plot.")

    @property
    def kind(self) -> str:
        return self.KIND

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("ignore", "controls"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "densities", tuple(float(d) for d in self.densities))
        if self.method not in self.METHODS:
            raise TicketlabError(f"Unknown {self.KIND} method {self.method!r}; choose one of {', '.join(self.METHODS)}.")
        if not self.densities:
            raise TicketlabError("At least one density is needed.")
        for d in self.densities:
            validate.fraction(d, "A density in --density")
        if len({density_label(d) for d in self.densities}) != len(self.densities):
            raise TicketlabError("A density is listed twice.")
        if self.scope not in ("global", "layer"):
            raise TicketlabError(f"Unknown scope {self.scope!r}; choose global or layer.")
        if self.distribution not in DISTRIBUTIONS:
            raise TicketlabError(f"Unknown density distribution {self.distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}.")
        if self.scope == "global" and self.distribution != "uniform":
            raise TicketlabError("--distribution applies to --scope layer only (global ranking sets its own densities).")
        for c in self.controls:
            if c not in self.CONTROLS:
                raise TicketlabError(f"Unknown control {c!r} for {self.KIND}; choose from {', '.join(self.CONTROLS)}.")
        if len(set(self.controls)) != len(self.controls):
            raise TicketlabError("A control is listed twice in --controls.")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.KIND, **config_json(self)}


def check_static_granularity(value: Any, densities: tuple[float, ...], scope: str, distribution: str) -> Granularity:
    """A static mask's granularity, parsed and checked against its densities and spread: N:M keeps
    exactly N/M of the weights; channels spread their density as one common fraction per layer."""
    granularity = Granularity.parse(value)
    if granularity.kind == "nm":
        wanted = granularity.n / granularity.m
        wrong = [d for d in densities if abs(d - wanted) > 1e-9]
        if wrong:
            raise TicketlabError(f"--granularity {granularity} keeps {granularity.n} of every {granularity.m} weights, "
                                 f"so --density must be {wanted:g}, not {wrong[0]:g}.")
    if granularity.coupled and scope == "layer" and distribution != "uniform":
        raise TicketlabError(f"--distribution {distribution} spreads single weights; with --granularity {granularity} "
                             "the layer scope keeps one common fraction of every layer's channels (--distribution "
                             "uniform).")
    return granularity


def refuse_dynamic_granularity(value: Any, method: str) -> Granularity:
    """RigL and SET move single weights: any other granularity is one sentence."""
    granularity = Granularity.parse(value)
    if not granularity.is_unstructured:
        raise TicketlabError(f"{method} drops and grows single weights, so it cannot take --granularity "
                             f"{granularity}; use --granularity unstructured, or prune-init / imp for "
                             f"{granularity} sparsity.")
    return granularity


@dataclass(frozen=True)
class PruneInitConfig(_SparseRun):
    """Pruning at initialisation: score the network at θ0 with ``method``, keep each density, train
    the mask from θ0. SNIP and GraSP score ``score_batches`` batches of ``score_batch_size``
    training examples. ``allow_collapse`` lets a mask with a fully pruned layer be trained
    (otherwise it is refused before any training).
    """

    KIND: ClassVar[str] = "prune-init"
    METHODS: ClassVar[tuple[str, ...]] = PAI_METHODS
    CONTROLS: ClassVar[tuple[str, ...]] = CONTROLS["prune-init"]

    method: str = setting("snip", choices=lambda: PAI_METHODS, help="Scorer applied at θ0.")
    scope: str = setting("global", choices=lambda: ("global", "layer"),
                         help="Rank all layers together (as the SNIP, GraSP and SynFlow papers do), or give each layer "
                              "its density from --distribution.")
    distribution: str = setting("uniform", choices=lambda: DISTRIBUTIONS, help="Layer-wise densities for --scope layer.")
    controls: tuple[str, ...] = setting((), parse=names_parser("--controls"), shown="none",
                                        help="Comma list of sanity checks: shuffle, reinit, invert; or none.")
    allow_collapse: bool = setting(False, is_flag=True, help="Train masks that prune a whole layer (otherwise refused).")
    score_batches: int = setting(1, type=int, help="Batches SNIP / GraSP score on.")
    score_batch_size: int = setting(256, type=int, help="Examples per scoring batch.")
    synflow_iterations: int = setting(100, type=int, help="SynFlow's scoring iterations.")
    synflow_double: bool = setting(False, is_flag=True, help="Score SynFlow in float64 (deep nets overflow float32).")
    granularity: Granularity = setting(Granularity(), parse=Granularity.parse, shown="unstructured",
                                       omit=is_unstructured,
                                       help=f"{GRANULARITY_HELP} --density still counts weights (N:M: it must be N/M).")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "granularity", check_static_granularity(self.granularity, self.densities,
                                                                         self.scope, self.distribution))
        validate.integer(self.score_batches, "--score-batches", low=1, high=10_000)
        validate.integer(self.score_batch_size, "--score-batch-size", low=1, high=MAX_BATCH)
        validate.integer(self.synflow_iterations, "--synflow-iterations", low=1, high=100_000)


@dataclass(frozen=True)
class SparseTrainConfig(_SparseRun):
    """Dynamic sparse training: a random mask with a layer-wise ``distribution`` that RigL or SET
    moves every ``update_every`` at constant per-layer density (`ticketlab.methods.dynamic`)."""

    KIND: ClassVar[str] = "sparse-train"
    METHODS: ClassVar[tuple[str, ...]] = DST_METHODS
    CONTROLS: ClassVar[tuple[str, ...]] = CONTROLS["sparse-train"]

    method: str = setting("rigl", choices=lambda: DST_METHODS, help="How the mask moves.")
    scope: str = "layer"
    distribution: str = setting("erk", choices=lambda: DISTRIBUTIONS,
                                help="Layer-wise densities of the initial random mask (kept constant during training).")
    controls: tuple[str, ...] = setting((), parse=names_parser("--controls"), shown="none",
                                        help="static (the initial mask, never updated), or none.")
    update_every: str = setting("100it", **DST_FLAGS["update_every"])
    alpha: float = setting(0.3, **DST_FLAGS["alpha"])
    end_fraction: float = setting(0.75, **DST_FLAGS["end_fraction"])
    granularity: Granularity = setting(Granularity(), parse=Granularity.parse, shown="unstructured",
                                       omit=is_unstructured,
                                       help="unstructured only: RigL and SET drop and grow single weights.")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "granularity", refuse_dynamic_granularity(self.granularity, self.method))
        if self.scope != "layer":
            raise TicketlabError("Dynamic sparse training keeps every layer's density fixed: use --scope layer.")
        self.dst_config()  # validates update_every, alpha, end_fraction

    def dst_config(self) -> DSTConfig:
        """The `DSTConfig` of the run."""
        return DSTConfig(method=self.method, update_every=self.update_every, alpha=self.alpha,
                         end_fraction=self.end_fraction)


#: Either kind of sparse-training config.
SparseRunConfig = PruneInitConfig | SparseTrainConfig
CONFIGS: dict[str, type] = {"prune-init": PruneInitConfig, "sparse-train": SparseTrainConfig}


def SparseConfig(kind: str = "prune-init", **fields: Any) -> PruneInitConfig | SparseTrainConfig:  # noqa: N802
    """The config of ``kind`` (``prune-init`` or ``sparse-train``) — the one-class spelling of
    earlier versions, kept for scripts; new code names `PruneInitConfig` / `SparseTrainConfig`."""
    if kind not in CONFIGS:
        raise TicketlabError(f"Unknown experiment kind {kind!r}; choose one of {', '.join(KINDS)}.")
    return CONFIGS[kind](**fields)


@dataclass
class SparseExperiment(Experiment):
    """A `PruneInitConfig` or `SparseTrainConfig` bound to a run directory; `run` does (or resumes) all the work.

    Every initial mask (controls included) is scored in `preflight`, before the run directory is
    claimed, so a layer collapse refuses the run before anything is written or trained.
    """

    config: SparseRunConfig

    growing_lists = ("seeds", "densities")
    #: ``dense`` is stored only when set: a finished run may add its dense baseline.
    appearing_keys = ("dense",)

    @classmethod
    def kind_of(cls, config: SparseRunConfig) -> str:
        return config.kind

    @property
    def granularity(self) -> Granularity:
        return Granularity.parse(getattr(self.config, "granularity", None))

    @classmethod
    def check(cls, config: SparseRunConfig, data: DataSplits, model: torch.nn.Module) -> None:
        """The ignore patterns must leave ``model`` (the `probe`) something to prune, the warm-up and
        LR drops must lie inside the training budget, and DST must make enough mask updates."""
        prunable_parameters(model, ignore=config.ignore)
        layout_for(config, data, model)   # a model whose groups cannot be found is refused here
        ipe = iterations_per_epoch(data, config.train.batch_size)
        config.train.check_budget(ipe)
        if config.kind == "sparse-train":
            check_update_count(config.dst_config(), config.train.steps.iterations(ipe), ipe)

    @classmethod
    def preflight(cls, config: SparseRunConfig, data: DataSplits, out: Path, resuming: bool,
                  device: torch.device) -> dict[MaskKey, ScoredMask]:
        """Score every initial mask not stored yet in ``out``, and refuse a layer collapse."""
        keys = [(seed, density, invert) for seed in config.seeds for density in config.densities
                for invert in ((False, True) if "invert" in config.controls else (False,))]
        if resuming:
            keys = [k for k in keys if not _mask_stored(_mask_dir(out, *k))]
        return MaskScorer(config, data, device).score_all(keys)

    def unit_dir(self, seed: int, density: float) -> Path:
        return self.out / f"seed-{seed}" / density_label(density)

    def before_parts(self) -> None:
        """Store θ0 of every seed and the masks scored before the claim (then `execute` trains)."""
        for seed in self.config.seeds:
            self.theta0(seed)
        for key, scored in sorted((self.preflight_result or {}).items()):
            self._store_mask(_mask_dir(self.out, *key), key, scored)

    def execute_seeds(self, seeds: tuple[int, ...]) -> None:
        """Train every unit of ``seeds`` (all densities, the method's masks and the controls; the
        dense baseline first with ``dense``)."""
        dense = [self._dense_job(seed) for seed in seeds] if self.config.dense else []
        self.train_all(dense + [job for seed in seeds for density in self.config.densities
                                for job in self._density_jobs(seed, density)])

    def _dense_job(self, seed: int) -> UnitJob:
        """The dense network of ``seed`` trained from θ0 (``seed-<s>/dense``): the baseline."""
        mask = Mask.ones_like(prunable_parameters(self.new_model(seed), ignore=self.config.ignore))
        return self._job(self.out / f"seed-{seed}" / "dense", seed, 1.0, "dense", self.theta0_builder(seed), mask,
                         None, {"method": "dense"}, label=f"seed {seed} dense")

    def write_summary(self) -> dict[str, Any]:
        summary = summarize_sparse(self.out, self.config)
        write_summary_files(self.out, summary)
        return summary

    # --- masks ---------------------------------------------------------------------------------
    def theta0(self, seed: int) -> dict[str, torch.Tensor]:
        path = self.out / f"seed-{seed}" / "init.safetensors"
        if not path.exists():
            save_state(self.new_model(seed), path)
        return load_state(path)

    def _store_mask(self, directory: Path, key: MaskKey, scored: ScoredMask) -> None:
        seed, density, invert = key
        if _mask_stored(directory):
            return
        extra = {"control": "invert"} if invert else {}
        scored.mask.save(directory / "mask.safetensors", {"seed": seed, "density": density,
                                                          "method": self.config.method, **extra})
        write_json(directory / "scoring.json", {"scoring_time": scored.seconds,
                                                "collapsed_layers": scored.mask.collapsed_layers()})

    def mask(self, seed: int, density: float, invert: bool = False) -> Mask:
        """The stored initial mask of one seed and target density (scored now if missing)."""
        directory = _mask_dir(self.out, seed, density, invert)
        if not _mask_stored(directory):
            key = (seed, density, invert)
            scored = MaskScorer(self.config, self.data, self.device).score_all([key])[key]
            self._store_mask(directory, key, scored)
        return Mask.load(directory / "mask.safetensors")

    def scoring_time(self, seed: int, density: float, invert: bool = False) -> float:
        path = _mask_dir(self.out, seed, density, invert) / "scoring.json"
        info = read_json(path)
        if not isinstance(info, dict) or not isinstance(info.get("scoring_time"), (int, float)):
            raise TicketlabError(f"{str(path)!r} is damaged (no scoring_time); delete its directory to score again.")
        return float(info["scoring_time"])

    # --- training ------------------------------------------------------------------------------
    def _density_jobs(self, seed: int, density: float) -> list[UnitJob]:
        """The units of one seed and target density: the method's mask, then each control."""
        cfg, unit = self.config, self.unit_dir(seed, density)
        mask = self.mask(seed, density)
        extra = {"method": cfg.method, "target_density": density, "scoring_time": self.scoring_time(seed, density)}
        updater = None
        if cfg.kind == "sparse-train":
            updater = make_updater(cfg.dst_config(), seed=derive_seed(seed, "dst", density))
        jobs = [self._job(unit, seed, density, "ticket", self.theta0_builder(seed), mask, updater, extra)]
        for control in cfg.controls:
            directory = unit / "controls" / control
            start, control_mask, control_extra = self.theta0_builder(seed), mask, dict(extra)
            if control == "shuffle":
                control_mask = shuffled_mask(mask, seed, "shuffle", density, layout=self.group_layout(),
                                             pattern=self.granularity.pattern)
            elif control == "reinit":
                start = self.state_builder(derive_seed(seed, "reinit", density))
            elif control == "invert":
                control_mask = self.mask(seed, density, invert=True)
                control_extra["scoring_time"] = self.scoring_time(seed, density, invert=True)
            # "static": the initial DST mask, no updates
            if control != "invert" and not (directory / "mask.safetensors").exists():
                control_mask.save(directory / "mask.safetensors", {"seed": seed, "density": density, "control": control})
            jobs.append(self._job(directory, seed, density, control, start, control_mask, None, control_extra))
        return jobs

    def theta0_builder(self, seed: int):
        """A function returning θ0 of ``seed`` (read when its unit trains)."""
        return lambda: self.theta0(seed)

    def state_builder(self, seed: int):
        """A function returning the freshly initialised state of ``seed`` (the reinit control)."""
        return lambda: self.new_model(seed).state_dict()

    def _job(self, directory: Path, seed: int, density: float, run: str, start: Any, mask: Mask, updater: Any,
             extra: dict[str, Any], label: str | None = None) -> UnitJob:
        """One unit of ``seed`` (a copy of ``mask``, logged as ``run`` at ``density``); ``label``
        defaults to the seed, the method and ``run``."""
        return UnitJob(unit_dir=directory, model=lambda: self.new_model(seed), start_state=start,
                       mask=Mask({n: t.clone() for n, t in mask.items()}), data_seed=seed,
                       metrics_key={"seed": seed, "density": density, "run": run},
                       label=label or f"seed {seed} {self.config.method} {run}", mask_updater=updater, extra=extra)


def _mask_dir(out: Path, seed: int, density: float, invert: bool) -> Path:
    unit = out / f"seed-{seed}" / density_label(density)
    return unit / "controls" / "invert" if invert else unit


def _mask_stored(directory: Path) -> bool:
    return (directory / "mask.safetensors").exists() and (directory / "scoring.json").exists()


def summarize_sparse(out: Path, config: SparseRunConfig) -> dict[str, Any]:
    """``summary.json`` of a sparse experiment: one entry per target density (in ``rounds``)."""
    entries: list[dict[str, Any]] = []
    for index, density in enumerate(config.densities):
        entry = aggregate_units({s: out / f"seed-{s}" / density_label(density) for s in config.seeds}, config.controls)
        if entry is not None:
            entries.append({"round": index, "target_density": density, **entry, "winning_ticket": None})
    dense = aggregate_units({s: out / f"seed-{s}" / "dense" for s in config.seeds}, ()) if config.dense else None
    return {
        "kind": config.kind, "method": config.method, "model": config.model, "data": config.data,
        "seeds": list(config.seeds), "controls": list(config.controls),
        "dense_test_accuracy": None if dense is None else dense["test_accuracy"],
        "complete": len(entries) == len(config.densities)
        and all(len(e["controls"]) == len(config.controls) for e in entries),
        "rounds": entries,
    }


def run_sparse(config: SparseRunConfig, out: str | Path, *, device: torch.device | str = "cpu",
               data: DataSplits | None = None, progress: ProgressFactory | None = None,
               stack: str | int = "auto", workers: WorkerSetting | None = None) -> dict[str, Any]:
    """Run (or resume) a pruning-at-init or dynamic-sparse-training experiment into ``out``
    (``stack``: how many networks train together, see `ticketlab.units.StackSetting`; ``workers``:
    processes or a Dask cluster for the seeds, see `ticketlab.units.WorkerSetting`)."""
    return SparseExperiment.prepare(config, out, device=device, data=data, progress=progress, stack=stack,
                                    workers=workers).run()
