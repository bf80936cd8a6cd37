"""Training the networks an instability analysis compares: the copies, and regenerated rewind points.

`train_copies` is the one place the copies are trained (stacked, several at once, where that pays).
`regenerate_rewind_states` recovers θk of a run for any k by retraining its dense round 0 up to k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..data import DataSplits
from ..masks import Mask
from ..steps import Step
from ..train import TrainConfig, iterations_per_epoch, train
from ..train.stacked import StackedJob, train_stacked
from ..units import SINGLE, STACKED, TRAINERS, ProgressFactory, StackSetting, group_size

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class CopyJob:
    """One copy to train: from ``start`` (a state dict, not modified) under ``mask``, with the data
    order of ``data_seed``, from iteration ``start_iteration`` to the end of the budget."""

    start: State
    mask: Mask
    data_seed: int
    start_iteration: int
    label: str = "copy"


def train_copies(jobs: Sequence[CopyJob], *, build: Callable[[], nn.Module], data: DataSplits,
                 config: TrainConfig, device: torch.device | str = "cpu",
                 progress: ProgressFactory | None = None) -> list[State]:
    """Train every job's network; return their final state dicts (CPU), in ``jobs`` order.

    Copies that start at the same iteration train together as one stacked computation
    (`ticketlab.train.stacked`) where `ticketlab.units.group_size` says stacking pays (small
    networks on a CPU, any on a GPU), else one after another. Only the start and the end are
    evaluated.
    """
    total = config.steps.iterations(iterations_per_epoch(data, config.batch_size))
    quiet = replace(config, eval_every=Step(total, "it"))
    stacks = group_size(StackSetting("auto"), build(), data, quiet, torch.device(device)) > 1
    states: dict[int, State] = {}
    for start in sorted({job.start_iteration for job in jobs}):
        indices = [i for i, job in enumerate(jobs) if job.start_iteration == start]
        group = [jobs[i] for i in indices]
        trained = (_train_stacked(group, build, data, quiet, device, progress, total) if stacks
                   else [_train_one(job, build, data, quiet, device, progress, total) for job in group])
        states.update(zip(indices, trained))
    return [states[i] for i in range(len(jobs))]


def _train_one(job: CopyJob, build: Callable[[], nn.Module], data: DataSplits, config: TrainConfig,
               device: torch.device | str, progress: ProgressFactory | None, total: int) -> State:
    model = build()
    model.load_state_dict(job.start)
    bar = progress(job.label, total, job.start_iteration) if progress else None
    try:
        train(model, data, config, data_seed=job.data_seed, mask=job.mask, start_iteration=job.start_iteration,
              device=device, on_step=(lambda i: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    return _cpu_state(model)


def _train_stacked(group: Sequence[CopyJob], build: Callable[[], nn.Module], data: DataSplits,
                   config: TrainConfig, device: torch.device | str, progress: ProgressFactory | None,
                   total: int) -> list[State]:
    models = [build() for _ in group]
    for model, job in zip(models, group):
        model.load_state_dict(job.start)
    label = " + ".join(job.label for job in group)
    bar = progress(label, total, group[0].start_iteration) if progress else None
    try:
        train_stacked([StackedJob(model=m, mask=j.mask, data_seed=j.data_seed) for m, j in zip(models, group)],
                      data, config, start_iteration=group[0].start_iteration, device=device,
                      on_step=(lambda i: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    return [_cpu_state(model) for model in models]


def _cpu_state(model: nn.Module) -> State:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def regenerate_rewind_states(iterations: Sequence[int], *, build: Callable[[], nn.Module], theta0: State,
                             dense_mask: Mask, data: DataSplits, config: TrainConfig, data_seed: int,
                             trainer: str = SINGLE, device: torch.device | str = "cpu") -> dict[int, State]:
    """θk for every k in ``iterations`` (all > 0): one dense training from θ0 with the run's recipe and
    data seed, stopped after max(k) iterations. The learning rate and the data order depend on the
    iteration alone, so stopping early changes nothing before the stop: these are the states the
    run's round 0 passed through.

    ``trainer`` is the code path that trained the run's round 0 (its ``result.json``'s ``trainer``:
    `SINGLE` or `STACKED`, see `ticketlab.units.unit.TRAINERS`); regeneration takes the same one,
    since the two agree only up to float rounding. On a CPU, with the same torch build, CPU model and
    thread count, the states are then the run's bit for bit."""
    if trainer not in TRAINERS:
        raise ValueError(f"trainer must be one of {TRAINERS}, not {trainer!r}")
    wanted = sorted(set(iterations))
    if not wanted:
        return {}
    last = wanted[-1]
    short = replace(config, steps=Step(last, "it"), eval_every=Step(last, "it"))
    captured: dict[int, State] = {}

    def keep(k: int) -> Callable[[nn.Module], None]:
        return lambda model: captured.__setitem__(k, _cpu_state(model))

    model = build()
    model.load_state_dict(theta0)
    capture = {k: keep(k) for k in wanted}
    if trainer == STACKED:
        train_stacked([StackedJob(model=model, mask=dense_mask, data_seed=data_seed, capture=capture)], data, short,
                      device=device)
    else:
        train(model, data, short, data_seed=data_seed, mask=dense_mask, device=device, capture=capture)
    return captured
