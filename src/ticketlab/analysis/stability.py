"""Instability analysis / linear mode connectivity (Frankle et al. 2020).

From a rewind point θk of an IMP run, train two copies of one round's network (same mask, two data
orders) to the end of the run's budget, evaluate the test error along the straight line between
them (`ticketlab.analysis.interpolation`) and report the error barrier. A sweep over k shows from
which iteration on training is stable (barrier below about 2 points): small networks from k = 0,
deep ones only after some training, which is why they need late rewinding.

Where θk comes from: k = 0 is θ0 (``init.safetensors``); the run's own rewind point is its
``rewind.safetensors``; any other k is *regenerated* by training the dense network from θ0 with the
run's recipe and data seed for k iterations, exactly what the run's round 0 did on its way to the
end of the budget, on the code path round 0 took (its ``result.json``'s ``trainer``: stacked or
alone). Bit for bit on the CPU that trained the run (same torch build and thread count); on another
machine or device, up to float rounding. A sparse round uses its own mask at every k (found by the
run with *its* rewind point), so a sweep asks from which k this ticket is stable; the paper runs IMP
once per k instead.

Output directory (default ``RUN/stability/seed-S-round-RR``), claimed under a lock; the run's own
files are only read::

    config.json  .lock  stability.json  stability.png
    rewind-<k>it/start.safetensors     θk when regenerated
    rewind-<k>it/copy-<i>.safetensors  the two trained copies (each kept once trained)
    rewind-<k>it/path.json             errors along the path (its presence: this k is done)

A rerun resumes: finished rewind points are read back, a trained copy is never retrained, and
adding rewind points to the sweep reuses those already measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import validate
from ..data import DataSplits
from ..devices import resolve_device
from ..errors import TicketlabError
from ..files import read_json, save_safetensors, write_json
from ..masks import Mask
from ..models import create_model
from ..runs import check_run_directory, claim_run_directory
from ..seeding import derive_seed
from ..steps import Step
from ..threads import step_macs, use_threads
from ..user_code import check_typed_specs
from ..units import SINGLE, STACKED, ProgressFactory, StackSetting, group_size, load_state
from .copies import CopyJob, regenerate_rewind_states, train_copies
from .imp_run import ImpRun
from .interpolation import batchnorm_layers, evaluate_path
from .stability_report import plot_stability

State = dict[str, torch.Tensor]
#: A network is called stable when its error barrier is below this many points (Frankle et al. 2020).
STABLE_BARRIER = 2.0
#: The most interpolation points one analysis may ask for (each one is a full test evaluation).
MAX_POINTS = 1001
KIND = "stability"
#: The most training examples BatchNorm statistics may be recomputed from (more than any dataset
#: holds: a larger --bn-examples simply uses the whole training split, this bound only catches typos).
MAX_BN_EXAMPLES = 10**9


@dataclass(frozen=True)
class StabilityConfig:
    """Which network to analyse and how.

    ``run`` is an IMP run directory, ``round_index`` one of its rounds (0: the dense network),
    ``seed`` one of its seeds (None: the first). ``points`` ≥ 3 evenly spaced α include both ends.
    ``rewind_sweep`` lists the rewind points k (steps: ``0``, ``50it``, ``1ep``); None means the
    run's own rewind point. BatchNorm statistics are recomputed at each α from the first
    ``bn_examples`` training examples.
    """

    run: str
    round_index: int
    seed: int | None = None
    points: int = 11
    rewind_sweep: tuple[Step, ...] | None = None
    bn_examples: int = 10_000
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", str(self.run))
        validate.integer(self.round_index, "--round", low=0)
        if self.seed is not None:
            validate.seed(self.seed, "--seed")
        validate.integer(self.points, "--points", low=3, high=MAX_POINTS)
        validate.integer(self.bn_examples, "--bn-examples", low=1, high=MAX_BN_EXAMPLES)
        if self.rewind_sweep is not None:
            sweep = tuple(Step.parse(s) for s in self.rewind_sweep)
            if not sweep:
                raise TicketlabError("--rewind-sweep needs at least one rewind point.")
            object.__setattr__(self, "rewind_sweep", sweep)

    def identity(self, run_path: Path, seed: int) -> dict[str, Any]:
        """What the output directory's results depend on (its ``config.json``). The sweep is not part
        of it: every rewind point has a directory of its own, so a longer sweep reuses a shorter one."""
        return {"run": str(run_path.resolve()), "seed": seed, "round": self.round_index, "points": self.points,
                "bn_examples": self.bn_examples}


@dataclass(frozen=True)
class RewindPoint:
    """One point of the sweep: ``label`` as the user wrote it, its ``iteration`` k, and where θk comes
    from (``source``: ``theta_0``, ``run`` for the run's own rewind file, or ``regenerated``)."""

    label: str
    iteration: int
    source: str


def rewind_points(run: ImpRun, data: DataSplits, sweep: Sequence[Step] | None) -> list[RewindPoint]:
    """The sweep resolved to iterations and sorted; every k must lie before the end of the run's budget,
    and no k may be named twice (``0,0`` or ``1ep`` beside the same count of iterations)."""
    ipe = run.iterations_per_epoch(data)
    total, own = run.config.train.steps.iterations(ipe), run.config.rewind.iterations(ipe)
    points: dict[int, RewindPoint] = {}
    for step in sweep or (run.config.rewind,):
        k = step.iterations(ipe)
        if k >= total:
            raise TicketlabError(f"The rewind point {step} ({k} iterations) is not before the end of the run's "
                                 f"training budget ({total} iterations).")
        if k in points:
            raise TicketlabError(f"--rewind-sweep names iteration {k} twice ({points[k].label} and {step}).")
        source = "theta_0" if k == 0 else "run" if k == own else "regenerated"
        points[k] = RewindPoint(str(step), k, source)
    return [points[k] for k in sorted(points)]


def copy_data_seeds(seed: int) -> tuple[int, int]:
    """The two copies' data-order seeds, derived from the replicate seed (the same for every k)."""
    first, second = (derive_seed(seed, "stability", "copy", i) % (validate.MAX_SEED + 1) for i in (0, 1))
    return first, second


def default_out(run: Path, seed: int, round_index: int) -> Path:
    return run / "stability" / f"seed-{seed}-round-{round_index:02d}"


@dataclass
class StabilityAnalysis:
    """A validated analysis of one round of one seed of a run, bound to its output directory.

    `prepare` does every check that can refuse it, before anything is written; `run` claims the
    output directory, measures (or reads back) every rewind point and writes the results.
    """

    config: StabilityConfig
    run_dir: ImpRun
    seed: int
    data: DataSplits
    mask: Mask
    theta0: dict[str, torch.Tensor]
    own_rewind: dict[str, torch.Tensor] | None
    points: list[RewindPoint]
    out: Path
    device: torch.device
    #: torch's CPU threads `prepare` set (None: it was given no ``threads`` and left them as they were).
    threads: int | None = None

    @classmethod
    def prepare(cls, config: StabilityConfig, *, out: str | Path | None = None,
                data: DataSplits | None = None, threads: str | int | None = None,
                typed_specs: dict[str, str | None] | None = None) -> "StabilityAnalysis":
        """Open the run, check the seed, round, rewind weights, sweep and output directory (read-only).

        ``threads`` (``"auto"`` or a count, as ``--threads``) then sets torch's CPU threads, sized
        with the network built here for the mask check (`ticketlab.threads`), so the caller need
        not build it again; the count is kept in ``threads``. Set last: a refused analysis leaves
        the process as it was. ``typed_specs`` (``{"--model": ..., "--data": ...}``) are the user
        code specs the command line typed: each must be what the run was trained with."""
        run = ImpRun.open(config.run)
        check_typed_specs(config.run, {"--model": run.config.model, "--data": run.config.data}, typed_specs or {})
        seed = run.config.seeds[0] if config.seed is None else config.seed
        run.check_seed(seed)
        mask = run.mask(seed, config.round_index)
        data = data or run.load_data()
        points = rewind_points(run, data, config.rewind_sweep)
        theta0 = run.init_state(seed)
        own = run.rewind_state(seed) if any(p.source == "run" for p in points) else None
        device = resolve_device(config.device)
        analysis = cls(config, run, seed, data, mask, theta0, own, points,
                       Path(out) if out is not None else default_out(run.path, seed, config.round_index), device)
        model = analysis.build()
        mask.validate(model)
        check_run_directory(analysis.out, analysis.identity, kind=KIND)
        if threads is not None:
            analysis.threads = use_threads(threads, step_macs(model, data.input_shape, run.config.train.batch_size))
        return analysis

    @property
    def identity(self) -> dict[str, Any]:
        return self.config.identity(self.run_dir.path, self.seed)

    def build(self) -> nn.Module:
        """A fresh network of the run's architecture (its weights are always overwritten)."""
        cfg = self.run_dir.config
        return create_model(cfg.model, self.data.input_shape, self.data.num_classes, seed=self.seed, width=cfg.width)

    def point_dir(self, point: RewindPoint) -> Path:
        return self.out / f"rewind-{point.iteration}it"

    def run(self, progress: ProgressFactory | None = None) -> dict[str, Any]:
        """Measure every rewind point not measured yet; write and return ``stability.json``'s record."""
        _, lock = claim_run_directory(self.out, self.identity, kind=KIND)
        try:
            self._regenerate_missing()
            records = [self._measure(point, progress) for point in self.points]
            summary = self._summary(records)
            write_json(self.out / "stability.json", summary)
            plot_stability(summary, self.out / "stability.png")
            return summary
        finally:
            lock.release()

    # --- the work ----------------------------------------------------------------------------
    def _copy_paths(self, point: RewindPoint) -> list[Path]:
        return [self.point_dir(point) / f"copy-{i}.safetensors" for i in (0, 1)]

    def _needs_start(self, point: RewindPoint) -> bool:
        done = (self.point_dir(point) / "path.json").exists() or all(p.exists() for p in self._copy_paths(point))
        return not done and not (self.point_dir(point) / "start.safetensors").exists()

    def _regenerate_missing(self) -> None:
        """θk of every regenerated point still needed, from one dense training (see `regenerate_rewind_states`)."""
        wanted = [p for p in self.points if p.source == "regenerated" and self._needs_start(p)]
        if not wanted:
            return
        cfg = self.run_dir.config
        states = regenerate_rewind_states(
            [p.iteration for p in wanted], build=self.build, theta0=self.theta0,
            dense_mask=self.run_dir.mask(self.seed, 0), data=self.data, config=cfg.train, data_seed=self.seed,
            trainer=self._round_zero_trainer(), device=self.device)
        for point in wanted:
            save_safetensors(self.point_dir(point) / "start.safetensors", states[point.iteration])

    def _round_zero_trainer(self) -> str:
        """The code path that trained the run's round 0 (recorded in its ``result.json``); for a run
        that did not record it, the one ``--stack auto`` takes (an early-bird round 0 trains alone)."""
        recorded = self.run_dir.round_trainer(self.seed, 0)
        if recorded is not None:
            return recorded
        cfg = self.run_dir.config
        if cfg.early_bird is not None:
            return SINGLE
        stacks = group_size(StackSetting("auto"), self.build(), self.data, cfg.train, torch.device(self.device)) > 1
        return STACKED if stacks else SINGLE

    def _start_state(self, point: RewindPoint) -> dict[str, torch.Tensor]:
        if point.source == "theta_0":
            return self.theta0
        if point.source == "run":
            assert self.own_rewind is not None  # loaded by prepare whenever a point needs it
            return self.own_rewind
        return load_state(self.point_dir(point) / "start.safetensors")

    def _copies(self, point: RewindPoint, progress: ProgressFactory | None) -> list[dict[str, torch.Tensor]]:
        """The two trained copies of ``point``, training (and saving) those not trained yet."""
        paths = self._copy_paths(point)
        missing = [i for i, path in enumerate(paths) if not path.exists()]
        if missing:
            start, seeds = self._start_state(point), copy_data_seeds(self.seed)
            jobs = [CopyJob(start, self.mask, seeds[i], point.iteration, label=f"k={point.label} copy {i}")
                    for i in missing]
            trained = train_copies(jobs, build=self.build, data=self.data, config=self.run_dir.config.train,
                                   device=self.device, progress=progress)
            for i, state in zip(missing, trained):
                save_safetensors(paths[i], state)
        return [load_state(path) for path in paths]

    def _measure(self, point: RewindPoint, progress: ProgressFactory | None) -> dict[str, Any]:
        """The path record of one rewind point (read back when ``path.json`` exists)."""
        record_path = self.point_dir(point) / "path.json"
        if record_path.exists():
            return _read_path_record(record_path)
        a, b = self._copies(point, progress)
        bn_data = self.data.train_x[: self.config.bn_examples]
        result = evaluate_path(self.build, a, b, self.config.points, (self.data.test_x, self.data.test_y),
                               bn_data, self.run_dir.config.train.batch_size, self.device)
        record = {"iteration": point.iteration, "start": point.source, "data_seeds": list(copy_data_seeds(self.seed)),
                  **result.to_json()}
        write_json(record_path, record)
        return record

    def _summary(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.run_dir.config
        ipe = self.run_dir.iterations_per_epoch(self.data)
        rows = [{"rewind": p.label, **r, "stable": r["barrier"] < STABLE_BARRIER} for p, r in zip(self.points, records)]
        return {
            "kind": KIND, "run": str(self.run_dir.path), "model": cfg.model, "data": cfg.data, "seed": self.seed,
            "round": self.config.round_index, "density": self.mask.density(), "points": self.config.points,
            "total_iterations": cfg.train.steps.iterations(ipe), "run_rewind_iteration": cfg.rewind.iterations(ipe),
            "batchnorm_recomputed": bool(batchnorm_layers(self.build())), "stable_barrier": STABLE_BARRIER,
            "rewind_points": rows,
        }


_PATH_FIELDS = ("iteration", "alphas", "errors", "losses", "endpoint_errors", "max_error", "barrier")


def _read_path_record(path: Path) -> dict[str, Any]:
    record = read_json(path)
    if not isinstance(record, dict) or any(f not in record for f in _PATH_FIELDS):
        raise TicketlabError(f"{str(path)!r} is damaged; delete it to measure this rewind point again.")
    return record


def run_stability(config: StabilityConfig, *, out: str | Path | None = None, data: DataSplits | None = None,
                  progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Prepare and run an instability analysis; return ``stability.json``'s record."""
    return StabilityAnalysis.prepare(config, out=out, data=data).run(progress)
