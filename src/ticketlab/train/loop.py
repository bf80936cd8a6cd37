"""A lean trainer: fixed budget, periodic evaluation, checkpoints, masked updates.

Data order is a pure function of ``(data_seed, epoch)`` and the learning rate a pure function of
the iteration, so a run resumed from a checkpoint continues exactly where it stopped: the final
weights and metrics equal those of an uninterrupted run, bit for bit on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataSplits
from ..errors import TicketlabError
from ..masks import BoundMask, Mask
from ..runs import MetricsLog, torch_load, torch_save
from .config import TrainConfig
from .optim import build_optimizer, learning_rate

#: Default number of evaluations per training run when ``eval_every`` is not given.
DEFAULT_EVALS = 20


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced. ``evals`` holds one dict per evaluation, in order."""

    evals: list[dict[str, Any]]
    wall_time: float

    @property
    def final(self) -> dict[str, Any]:
        return self.evals[-1]

    @property
    def early_stop(self) -> dict[str, Any]:
        """The evaluation with the lowest validation loss (first one on ties)."""
        return min(self.evals, key=lambda e: e["val_loss"])


def iterations_per_epoch(data: DataSplits, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped); at least one."""
    return max(1, len(data.train_y) // batch_size)


def epoch_order(data_seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of training examples for one epoch, from its own seeded generator."""
    generator = torch.Generator().manual_seed(data_seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (in %) of ``model`` on ``(x, y)``; model left in eval mode."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start: start + batch_size])
        target = y[start: start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    n = max(1, len(y))
    return loss_sum / n, 100.0 * correct / n


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an unavailable device is a TicketlabError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TicketlabError(f"Unknown device {name!r}; use cpu, cuda, cuda:N or auto.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TicketlabError("CUDA was requested but no CUDA device is available; use --device cpu.")
    return device


def train(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    *,
    data_seed: int,
    mask: Mask | None = None,
    start_iteration: int = 0,
    device: torch.device | str = "cpu",
    checkpoint_path: str | Path | None = None,
    metrics: MetricsLog | None = None,
    metrics_key: Mapping[str, Any] | None = None,
    capture: Mapping[int, Callable[[nn.Module], None]] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place from ``start_iteration`` to the end of the budget.

    Args:
        data: in-memory splits; the training split is shuffled per epoch from ``data_seed``.
        mask: pruned weights are zeroed first and stay exactly zero (gradients, optimiser state
            and weights are masked around every step).
        start_iteration: where training starts (late rewinding resumes the schedule and data
            order at the rewind step, with a fresh optimiser).
        checkpoint_path: if given, a checkpoint is written at every evaluation and, if it exists
            at the start, training resumes from it. The caller deletes it once it has stored
            the result, so a kill between the two only costs recomputation.
        metrics, metrics_key: every evaluation is appended to ``metrics`` with ``metrics_key``.
        capture: iteration -> callback given the model after that many iterations (used to save
            the rewind point theta_k).
        on_step: called with the number of iterations done after every step (progress bars).
    """
    device = torch.device(device)
    ipe = iterations_per_epoch(data, config.batch_size)
    total = config.steps.iterations(ipe)
    if not 0 <= start_iteration < total:
        raise TicketlabError(f"Training cannot start at iteration {start_iteration} of a {total}-iteration budget.")
    every = (config.eval_every.iterations(ipe) if config.eval_every is not None
             else max(1, math.ceil(total / DEFAULT_EVALS)))
    capture = dict(capture or {})
    key = dict(metrics_key or {})

    model.to(device)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    val_x, val_y = data.val_x.to(device), data.val_y.to(device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    optimizer = build_optimizer(model.parameters(), config)
    bound: BoundMask | None = mask.bind(model) if mask is not None else None
    if bound is not None:
        bound.zero_weights_()

    iteration, evals, elapsed = start_iteration, [], 0.0
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    if checkpoint_path is not None and checkpoint_path.exists():
        state = torch_load(checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        iteration, evals, elapsed = state["iteration"], state["evals"], state["elapsed"]
        if metrics is not None:
            metrics.truncate_after(key, iteration)

    def run_eval() -> None:
        val_loss, val_acc = evaluate(model, val_x, val_y)
        test_loss, test_acc = evaluate(model, test_x, test_y)
        record = {"iteration": iteration, "val_loss": val_loss, "val_accuracy": val_acc,
                  "test_loss": test_loss, "test_accuracy": test_acc}
        evals.append(record)
        if metrics is not None:
            metrics.append({**key, **record})
        if checkpoint_path is not None and iteration < total:
            torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "torch_rng": torch.get_rng_state(), "iteration": iteration, "evals": evals,
                        "elapsed": elapsed + time.perf_counter() - started}, checkpoint_path)

    started = time.perf_counter()
    if not evals:
        run_eval()
    order, order_epoch = None, -1
    model.train()
    while iteration < total:
        if iteration in capture:
            capture[iteration](model)
        epoch, position = divmod(iteration, ipe)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(data_seed, epoch, len(train_y)).to(device), epoch
        index = order[position * config.batch_size: (position + 1) * config.batch_size]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, iteration, ipe)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(train_x[index]), train_y[index])
        loss.backward()
        if bound is not None:
            bound.zero_grads_()
        optimizer.step()
        if bound is not None:
            bound.zero_weights_()
        iteration += 1
        if on_step is not None:
            on_step(iteration)
        if iteration % every == 0 or iteration == total:
            if not torch.isfinite(loss):
                raise TicketlabError(f"Training diverged (loss {float(loss)}) at iteration {iteration}; lower --lr.")
            run_eval()
            model.train()
    if iteration in capture:
        capture[iteration](model)
    return TrainResult(evals=evals, wall_time=elapsed + time.perf_counter() - started)
