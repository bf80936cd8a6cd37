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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import validate
from ..data import DataSplits
from ..densities import DISTRIBUTIONS
from ..errors import TicketlabError
from ..masks import Mask
from ..methods.dynamic import DST_METHODS, DSTConfig, check_update_count
from ..methods.updaters import make_updater
from ..methods.pai import PAI_METHODS
from ..models import create_model
from ..files import read_json, write_json
from ..seeding import derive_seed, generator
from ..targets import prunable_parameters
from ..train import TrainConfig, iterations_per_epoch
from ..train.config import MAX_BATCH
from ..units import Experiment, ProgressFactory, UnitJob, WorkerSetting, aggregate_units, load_state, save_state
from .scoring import MaskKey, MaskScorer, ScoredMask

KINDS: tuple[str, ...] = ("prune-init", "sparse-train")
CONTROLS: dict[str, tuple[str, ...]] = {"prune-init": ("shuffle", "reinit", "invert"), "sparse-train": ("static",)}


def density_label(density: float) -> str:
    """Directory name of one density: ``density-0.05``."""
    return f"density-{density:g}"


@dataclass(frozen=True)
class SparseConfig:
    """One sparse-training experiment: a method, one or more target densities, replicate seeds.

    ``scope`` and ``distribution`` say how the density is spread: ``global`` ranks all layers
    together (pruning at init only), ``layer`` gives each layer the density of ``distribution``
    (``uniform``, ``er``, ``erk``). SNIP and GraSP score ``score_batches`` batches of
    ``score_batch_size`` training examples. ``allow_collapse`` lets a mask with a fully pruned
    layer be trained (otherwise it is refused before any training).
    """

    kind: str = "prune-init"
    method: str = "snip"
    densities: tuple[float, ...] = (0.05,)
    model: str = "lenet300"
    width: float = 1.0
    data: str = "mnist5k"
    data_dir: str | None = None
    scope: str = "global"
    distribution: str = "uniform"
    ignore: tuple[str, ...] = ()
    controls: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    allow_collapse: bool = False
    score_batches: int = 1
    score_batch_size: int = 256
    synflow_iterations: int = 100
    synflow_double: bool = False
    update_every: str = "100it"
    alpha: float = 0.3
    end_fraction: float = 0.75
    val_fraction: float = 0.1
    split_seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name in ("densities", "ignore", "controls"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "densities", tuple(float(d) for d in self.densities))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.kind not in KINDS:
            raise TicketlabError(f"Unknown experiment kind {self.kind!r}; choose one of {', '.join(KINDS)}.")
        methods = PAI_METHODS if self.kind == "prune-init" else DST_METHODS
        if self.method not in methods:
            raise TicketlabError(f"Unknown {self.kind} method {self.method!r}; choose one of {', '.join(methods)}.")
        if not self.densities:
            raise TicketlabError("At least one density is needed.")
        for d in self.densities:
            validate.fraction(d, "A density in --density")
        if len({density_label(d) for d in self.densities}) != len(self.densities):
            raise TicketlabError("A density is listed twice.")
        if self.scope not in ("global", "layer"):
            raise TicketlabError(f"Unknown scope {self.scope!r}; choose global or layer.")
        if self.kind == "sparse-train" and self.scope != "layer":
            raise TicketlabError("Dynamic sparse training keeps every layer's density fixed: use --scope layer.")
        if self.distribution not in DISTRIBUTIONS:
            raise TicketlabError(f"Unknown density distribution {self.distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}.")
        if self.scope == "global" and self.distribution != "uniform":
            raise TicketlabError("--distribution applies to --scope layer only (global ranking sets its own densities).")
        allowed = CONTROLS[self.kind]
        for c in self.controls:
            if c not in allowed:
                raise TicketlabError(f"Unknown control {c!r} for {self.kind}; choose from {', '.join(allowed)}.")
        if len(set(self.controls)) != len(self.controls):
            raise TicketlabError("A control is listed twice in --controls.")
        validate.run_common(self)
        validate.integer(self.score_batches, "--score-batches", low=1, high=10_000)
        validate.integer(self.score_batch_size, "--score-batch-size", low=1, high=MAX_BATCH)
        validate.integer(self.synflow_iterations, "--synflow-iterations", low=1, high=100_000)
        if self.kind == "sparse-train":
            self.dst_config()  # validates update_every, alpha, end_fraction

    def dst_config(self) -> DSTConfig:
        """The `DSTConfig` of a sparse-train experiment."""
        return DSTConfig(method=self.method, update_every=self.update_every, alpha=self.alpha,
                         end_fraction=self.end_fraction)

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "train"}
        for k in ("densities", "ignore", "controls", "seeds"):
            out[k] = list(out[k])
        if self.kind == "prune-init":
            for k in ("update_every", "alpha", "end_fraction"):
                out.pop(k)
        else:
            for k in ("score_batches", "score_batch_size", "synflow_iterations", "synflow_double", "allow_collapse"):
                out.pop(k)
        if self.width == 1.0:  # stored only when used: earlier run directories still match
            out.pop("width")
        out["train"] = self.train.to_json()
        return out


@dataclass
class SparseExperiment(Experiment):
    """A `SparseConfig` bound to a run directory; `run` does (or resumes) all the work.

    Every initial mask (controls included) is scored in `preflight`, before the run directory is
    claimed, so a layer collapse refuses the run before anything is written or trained.
    """

    config: SparseConfig

    @classmethod
    def kind_of(cls, config: SparseConfig) -> str:
        return config.kind

    @classmethod
    def check(cls, config: SparseConfig, data: DataSplits) -> None:
        prunable_parameters(create_model(config.model, data.input_shape, data.num_classes, seed=0, width=config.width),
                            ignore=config.ignore)
        if config.kind == "sparse-train":
            ipe = iterations_per_epoch(data, config.train.batch_size)
            check_update_count(config.dst_config(), config.train.steps.iterations(ipe), ipe)

    @classmethod
    def preflight(cls, config: SparseConfig, data: DataSplits, out: Path, resuming: bool,
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
        """Train every unit of ``seeds`` (all densities, the method's masks and the controls)."""
        self.train_all([job for seed in seeds for density in self.config.densities
                        for job in self._density_jobs(seed, density)])

    def write_summary(self) -> dict[str, Any]:
        summary = summarize_sparse(self.out, self.config)
        write_json(self.out / "summary.json", summary)
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
                control_mask = mask.shuffled(generator(seed, "shuffle", density))
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
             extra: dict[str, Any]) -> UnitJob:
        return UnitJob(unit_dir=directory, model=lambda: self.new_model(seed), start_state=start,
                       mask=Mask({n: t.clone() for n, t in mask.items()}), data_seed=seed,
                       metrics_key={"seed": seed, "density": density, "run": run},
                       label=f"seed {seed} {self.config.method} {run}", mask_updater=updater, extra=extra)


def _mask_dir(out: Path, seed: int, density: float, invert: bool) -> Path:
    unit = out / f"seed-{seed}" / density_label(density)
    return unit / "controls" / "invert" if invert else unit


def _mask_stored(directory: Path) -> bool:
    return (directory / "mask.safetensors").exists() and (directory / "scoring.json").exists()


def summarize_sparse(out: Path, config: SparseConfig) -> dict[str, Any]:
    """``summary.json`` of a sparse experiment: one entry per target density (in ``rounds``)."""
    entries: list[dict[str, Any]] = []
    for index, density in enumerate(config.densities):
        entry = aggregate_units({s: out / f"seed-{s}" / density_label(density) for s in config.seeds}, config.controls)
        if entry is not None:
            entries.append({"round": index, "target_density": density, **entry, "winning_ticket": None})
    return {
        "kind": config.kind, "method": config.method, "model": config.model, "data": config.data,
        "seeds": list(config.seeds), "controls": list(config.controls), "dense_test_accuracy": None,
        "complete": len(entries) == len(config.densities)
        and all(len(e["controls"]) == len(config.controls) for e in entries),
        "rounds": entries,
    }


def run_sparse(config: SparseConfig, out: str | Path, *, device: torch.device | str = "cpu",
               data: DataSplits | None = None, progress: ProgressFactory | None = None,
               stack: str | int = "auto", workers: WorkerSetting | None = None) -> dict[str, Any]:
    """Run (or resume) a pruning-at-init or dynamic-sparse-training experiment into ``out``
    (``stack``: how many networks train together, see `ticketlab.units.StackSetting`; ``workers``:
    processes or a Dask cluster for the seeds, see `ticketlab.units.WorkerSetting`)."""
    return SparseExperiment.prepare(config, out, device=device, data=data, progress=progress, stack=stack,
                                    workers=workers).run()
