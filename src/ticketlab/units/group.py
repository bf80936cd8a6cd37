"""Train many independent units at once: the networks that can stack train as one computation.

A round's ticket and its controls, every seed of a round, every density of ``prune-init``: each
is a unit (`train_unit`), and they do not depend on one another. `train_units` takes them all,
returns the finished ones' records, and trains the rest in groups through
`ticketlab.train.stacked.train_stacked` when that pays (`group_size`), one at a time otherwise
(dynamic sparse training, torchrun, a model with layers that cannot stack, or a group of one).
Every unit is stored exactly as `train_unit` stores it, so a run may be resumed with another
``--stack`` setting, and its files do not say how it was trained.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataSplits
from ..errors import TicketlabError
from ..masks import Mask
from ..progress import Finished, announce
from ..runs import MetricsLog
from ..threads import step_macs
from ..train import TrainConfig, iterations_per_epoch
from ..train.checkpoint import CHECKPOINT_NAME
from ..train.distributed import is_distributed
from ..train.stacked import StackedJob, resume_iteration, train_stacked
from ..train.stacking import StackingUnsupported, check_stackable
from .unit import STACKED, ProgressFactory, finished_record, store_result, train_unit

#: The most networks one stacked group holds on a CPU and on a GPU.
MAX_GROUP = {"cpu": 16, "cuda": 32}
#: On a CPU, stacking pays while one network's training step is small: multiply-accumulates per
#: step (batch x per-example MACs) at most this. Measured (benchmarks/stacked_training.py, 2 cores):
#: LeNet-300-100 on digits, 3.0M per step, 2.2x faster stacked (8 networks); on mnist5k, 16M per
#: step, 0.75-1.08x; conv2 on digits, 144M per step, 0.79x.
CPU_STACK_MAX_STEP_MACS = 6_000_000
#: On a GPU a small network is bound by kernel launches, stacking pays up to this per step.
GPU_STACK_MAX_STEP_MACS = 20_000_000_000


@dataclass(frozen=True)
class StackSetting:
    """How many networks train together: ``"auto"`` (`group_size` decides), ``"off"`` (one at a
    time) or a fixed group size ≥ 1."""

    value: str | int = "auto"

    @classmethod
    def parse(cls, text: "str | int | StackSetting") -> "StackSetting":
        if isinstance(text, StackSetting):
            return text
        word = str(text).strip().lower()
        if word in ("auto", "off"):
            return cls(word)
        if not word.isdigit() or not 1 <= int(word) <= 1024:
            raise TicketlabError(f"Cannot read --stack {text!r}: write auto, off, or a group size from 1 to 1024.")
        return cls(int(word))


@dataclass
class UnitJob:
    """One unit to train: its directory, its mask, and what `train_unit` takes besides (see there).

    The model to train in and the start weights are built only when the unit trains (``model``,
    ``start_state``: functions), so a long list of units holds their masks, not their networks.
    """

    unit_dir: Path
    model: Callable[[], nn.Module]
    start_state: Callable[[], Mapping[str, torch.Tensor]]
    mask: Mask
    data_seed: int
    metrics_key: Mapping[str, Any]
    label: str
    start_iteration: int = 0
    capture: dict | None = None
    mask_updater: Any = None
    extra: Mapping[str, Any] | None = field(default=None)
    on_evaluation: Callable[[int, nn.Module], bool] | None = None

    @property
    def trains_alone(self) -> bool:
        """A mask updater (RigL, SET) or a stopping rule (early-bird) needs the single-network loop."""
        return self.mask_updater is not None or self.on_evaluation is not None


def group_size(setting: StackSetting, model: nn.Module, data: DataSplits, config: TrainConfig,
               device: torch.device) -> int:
    """How many networks of ``model``'s architecture train together (1 = one at a time).

    Deterministic, so a resumed run groups as the interrupted one did: ``off`` -> 1, a number ->
    that number; ``auto`` -> the device's `MAX_GROUP` where one network's step is small enough to
    be bound by per-step overheads (`CPU_STACK_MAX_STEP_MACS`, `GPU_STACK_MAX_STEP_MACS`), else 1.
    Models with a layer `stack_networks` cannot stack, or whose stacked forward differs from their own
    (`check_stackable`: a user model reshaping its input in its forward), and torchrun, always give 1.
    """
    if setting.value == "off" or is_distributed():
        return 1
    try:
        check_stackable(model, data.input_shape)
    except StackingUnsupported:
        return 1
    if isinstance(setting.value, int):
        return setting.value
    kind = "cuda" if device.type == "cuda" else "cpu"
    limit = GPU_STACK_MAX_STEP_MACS if kind == "cuda" else CPU_STACK_MAX_STEP_MACS
    return MAX_GROUP[kind] if step_macs(model, data.input_shape, config.batch_size) <= limit else 1


def train_units(jobs: Sequence[UnitJob], *, data: DataSplits, config: TrainConfig, device: torch.device,
                metrics: MetricsLog, stack: StackSetting = StackSetting(), progress: ProgressFactory | None = None,
                ) -> list[dict[str, Any]]:
    """Train (or read back) every unit of ``jobs``; return their records in order.

    Units that are done return their stored record. The rest train in balanced groups of at
    most `group_size` that start (or resume) at the same iteration, stacked (`train_stacked`)
    whenever the size is 2 or more, even a group that holds a single unit: then every unit's bits
    are the same however the units were grouped (resumed with some of them done, or spread over
    workers). With a size of 1, and for units with a mask updater, each trains alone through
    `train_unit`.
    """
    records: dict[int, dict[str, Any]] = {}
    pending = []
    for index, job in enumerate(jobs):
        finished = finished_record(job.unit_dir)
        if finished is not None:
            records[index] = finished
        else:
            pending.append(index)
    size = group_size(stack, jobs[pending[0]].model(), data, config, device) if pending else 1
    total = config.steps.iterations(iterations_per_epoch(data, config.batch_size))
    tally = _Tally(len(pending))
    for group in _groups([jobs[i] for i in pending], pending, size, total):
        members = [jobs[i] for i in group]
        if size == 1 or members[0].trains_alone:
            records[group[0]] = _train_alone(members[0], data, config, device, metrics, progress)
        else:
            for index, record in zip(group, _train_group(members, data, config, device, metrics, progress, total)):
                records[index] = record
        for index in group:
            announce(progress, tally.finished(jobs[index].label, records[index]))
    return [records[i] for i in range(len(jobs))]


class _Tally:
    """Counts finished units of one `train_units` call and estimates the time left."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def finished(self, label: str, record: dict[str, Any]) -> Finished:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        return Finished(label=label, density=record.get("density"), test_accuracy=record.get("test_accuracy"),
                        done=self.done, total=self.total, elapsed=elapsed, eta=eta)


def _groups(jobs: Sequence[UnitJob], indices: Sequence[int], size: int, total: int) -> list[list[int]]:
    """Indices grouped by where they start (start iteration, checkpoint iteration), in balanced
    chunks of at most ``size``; mask-updater units (and every unit when ``size`` is 1) alone."""
    by_start: dict[tuple, list[int]] = {}
    for job, index in zip(jobs, indices):
        if job.trains_alone or size == 1:
            by_start.setdefault(("alone", index), []).append(index)
            continue
        key = (job.start_iteration, resume_iteration(job.unit_dir / CHECKPOINT_NAME, total))
        by_start.setdefault(key, []).append(index)
    groups = []
    for members in by_start.values():
        chunks = -(-len(members) // size)
        groups += [members[i::chunks] for i in range(chunks)]  # balanced: 17 at 16 -> 9 + 8, not 16 + 1
    return sorted(groups, key=lambda g: g[0])


def _stacked_job(job: UnitJob, model: nn.Module) -> StackedJob:
    return StackedJob(model=model, mask=job.mask, data_seed=job.data_seed,
                      checkpoint_path=job.unit_dir / CHECKPOINT_NAME, metrics_key=job.metrics_key,
                      capture=job.capture or {})


def _train_alone(job: UnitJob, data: DataSplits, config: TrainConfig, device: torch.device, metrics: MetricsLog,
                 progress: ProgressFactory | None) -> dict[str, Any]:
    return train_unit(job.unit_dir, model=job.model(), start_state=job.start_state(), mask=job.mask, data=data,
                      config=config, data_seed=job.data_seed, device=device, metrics=metrics,
                      metrics_key=job.metrics_key, label=job.label, start_iteration=job.start_iteration,
                      capture=job.capture, mask_updater=job.mask_updater, progress=progress, extra=job.extra,
                      on_evaluation=job.on_evaluation)


def _train_group(jobs: Sequence[UnitJob], data: DataSplits, config: TrainConfig, device: torch.device,
                 metrics: MetricsLog, progress: ProgressFactory | None, total: int) -> list[dict[str, Any]]:
    """Train ``jobs`` stacked (they start at the same iteration) and store each unit's result."""
    models = [job.model() for job in jobs]
    for job, model in zip(jobs, models):
        model.load_state_dict(job.start_state())  # copies: the start point is never aliased
    start = jobs[0].start_iteration
    label = f"{jobs[0].label} + {len(jobs) - 1} more, stacked"
    bar = progress(label, total, start) if progress is not None else None
    try:
        results = train_stacked([_stacked_job(job, model) for job, model in zip(jobs, models)], data, config,
                                start_iteration=start,
                                device=device, metrics=metrics,
                                on_step=(lambda i: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    return [store_result(job.unit_dir, model, job.mask, result, metrics_key=job.metrics_key,
                         iterations=result.final["iteration"] - start, trainer=STACKED, extra=job.extra)
            for job, model, result in zip(jobs, models, results)]


__all__ = ["CPU_STACK_MAX_STEP_MACS", "GPU_STACK_MAX_STEP_MACS", "MAX_GROUP", "StackSetting", "UnitJob",
           "group_size", "train_units"]
