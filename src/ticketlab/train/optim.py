"""Optimiser construction and the learning-rate schedule (a pure function of the iteration)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .config import TrainConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with optional momentum/Nesterov), Adam (L2 weight decay) or AdamW (decoupled decay).

    ``foreach`` is forced so that the whole update is a handful of fused kernels; it also keeps
    the arithmetic identical from run to run, which bit-for-bit resume relies on.
    """
    params = list(params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay, foreach=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)


def learning_rate(config: TrainConfig, iteration: int, iterations_per_epoch: int) -> float:
    """The learning rate used for the update at ``iteration`` (0-based).

    Linear warm-up over ``warmup`` iterations, then multiplied by ``lr_gamma`` once for every
    drop step already reached. Being a function of the iteration alone, it needs no scheduler
    state to resume.
    """
    lr = config.lr
    warmup = config.warmup.iterations(iterations_per_epoch)
    if warmup > 0 and iteration < warmup:
        lr *= (iteration + 1) / warmup
    drops = sum(1 for s in config.lr_drops if iteration >= s.iterations(iterations_per_epoch))
    return lr * config.lr_gamma ** drops
