"""What a training run iterates over: its budget in iterations, the data order of every epoch.

Both are pure functions of the configuration, the data size and a seed, so a run resumed from a
checkpoint, or trained stacked with others (`ticketlab.train.stacked`), sees exactly the batches
it would see alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data import DataSplits
from ..errors import TicketlabError
from . import distributed as dist_helpers
from .config import TrainConfig

#: Default number of evaluations per training run when ``eval_every`` is not given.
DEFAULT_EVALS = 20


def iterations_per_epoch(data: DataSplits, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped); at least one."""
    return max(1, len(data.train_y) // batch_size)


def epoch_order(data_seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of training examples for one epoch, from its own seeded generator."""
    generator = torch.Generator().manual_seed(data_seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


@dataclass
class Budget:
    """The training budget resolved against the data: iterations, per epoch, between evaluations."""

    total: int
    per_epoch: int
    eval_every: int
    world: int
    rank: int

    @classmethod
    def resolve(cls, data: DataSplits, config: TrainConfig, start_iteration: int, distributed: bool) -> "Budget":
        world, rank = (dist_helpers.world_size(), dist_helpers.rank()) if distributed else (1, 0)
        if config.batch_size % world:
            raise TicketlabError(
                f"The batch size {config.batch_size} cannot be split evenly over {world} processes; "
                "choose a batch size divisible by the number of processes."
            )
        ipe = iterations_per_epoch(data, config.batch_size)
        total = config.steps.iterations(ipe)
        if not 0 <= start_iteration < total:
            raise TicketlabError(f"Training cannot start at iteration {start_iteration} of a {total}-iteration budget.")
        every = (config.eval_every.iterations(ipe) if config.eval_every is not None
                 else max(1, math.ceil(total / DEFAULT_EVALS)))
        return cls(total=total, per_epoch=ipe, eval_every=every, world=world, rank=rank)


__all__ = ["Budget", "DEFAULT_EVALS", "epoch_order", "iterations_per_epoch"]
