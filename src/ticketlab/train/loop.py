"""A lean trainer: fixed budget, periodic evaluation, checkpoints, masked updates.

Data order is a pure function of ``(data_seed, epoch)`` and the learning rate a pure function of
the iteration, so a run resumed from a checkpoint continues exactly where it stopped: the final
weights and metrics equal those of an uninterrupted run, bit for bit on CPU.

Two extensions share the same loop:

* a ``mask_updater`` (RigL, SET: `ticketlab.methods.dynamic`) moves the mask every ΔT iterations.
  Only on those iterations does it see the dense gradient before the pruned entries are zeroed,
  so ordinary steps cost exactly what static masked training costs;
* under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel and
  every rank takes a disjoint, contiguous slice of each global batch (the same global batches in
  the same order as one process), so each update equals single-process training up to float
  reduction order. Evaluation runs on every rank with identical weights, hence identical results;
  each rank writes the checkpoint and metrics paths it is given (the experiment runners give
  every rank its own run directory, see `ticketlab.experiments.claim_for_process`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataSplits
from ..errors import TicketlabError
from ..masks import BoundMask, Mask
from ..runs import MetricsLog, torch_load, torch_save
from . import distributed as dist_helpers
from .config import TrainConfig
from .optim import build_optimizer, learning_rate

if TYPE_CHECKING:
    from ..methods.dynamic import MaskUpdater

#: Default number of evaluations per training run when ``eval_every`` is not given.
DEFAULT_EVALS = 20


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced. ``evals`` holds one dict per evaluation, in order.

    With a mask updater, ``mask_updates`` counts the updates of the whole run (resumed segments
    included) and ``mask_changed_fraction`` is |initial minus final| / |initial|: the fraction of
    the initially kept weights that are no longer kept at the end.
    """

    evals: list[dict[str, Any]]
    wall_time: float
    mask_updates: int = 0
    mask_changed_fraction: float = 0.0

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


def _changed_fraction(initial: Mapping[str, torch.Tensor], final: Mask) -> float:
    """|initial minus final| / |initial| over all layers (0 when nothing was kept)."""
    kept = sum(int(t.sum()) for t in initial.values())
    lost = sum(int((initial[n] & ~final[n]).sum()) for n in final)
    return lost / kept if kept else 0.0


def _check_ranks_share_mask(mask: Mask, when: str) -> None:
    """Every rank must hold the same mask; all ranks reach the same verdict (no hang)."""
    from ..methods.dynamic import mask_fingerprint

    if not dist_helpers.all_ranks_agree(mask_fingerprint(mask)):
        raise TicketlabError(f"The ranks hold different masks {when}; every rank must start from the same mask and seed.")


def train(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    *,
    data_seed: int,
    mask: Mask | None = None,
    mask_updater: "MaskUpdater | None" = None,
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
        mask_updater: RigL or SET (`ticketlab.methods.dynamic.make_updater`); needs ``mask``,
            which it rewires *in place*, so after `train` returns ``mask`` is the final mask.
            Per-layer kept counts never change.
        start_iteration: where training starts (late rewinding resumes the schedule and data
            order at the rewind step, with a fresh optimiser).
        device: where to train; under torchrun ``cuda`` means ``cuda:LOCAL_RANK``.
        checkpoint_path: if given, a checkpoint is written at every evaluation and, if it exists
            at the start, training resumes from it (with a mask updater it also holds the current
            mask, the initial mask and the updater's state). The caller deletes it once it has
            stored the result, so a kill between the two only costs recomputation. Under
            torchrun each rank writes and reads the path it is given (give each its own).
        metrics, metrics_key: every evaluation is appended to ``metrics`` with ``metrics_key``.
        capture: iteration -> callback given the model after that many iterations (used to save
            the rewind point theta_k); called on every rank with the unwrapped model.
        on_step: called with the number of iterations done after every step (progress bars).
    """
    distributed = dist_helpers.init_from_env(torch.device(device))
    device = dist_helpers.rank_device(torch.device(device))
    world, rank = (dist_helpers.world_size(), dist_helpers.rank()) if distributed else (1, 0)
    if config.batch_size % world:
        raise TicketlabError(
            f"The batch size {config.batch_size} cannot be split evenly over {world} processes; "
            "choose a batch size divisible by the number of processes."
        )
    local_batch = config.batch_size // world
    ipe = iterations_per_epoch(data, config.batch_size)
    total = config.steps.iterations(ipe)
    if not 0 <= start_iteration < total:
        raise TicketlabError(f"Training cannot start at iteration {start_iteration} of a {total}-iteration budget.")
    if mask_updater is not None and mask is None:
        raise TicketlabError("Dynamic sparse training (a mask updater) needs an initial mask to update.")
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
    schedule = mask_updater.start(total, ipe) if mask_updater is not None else None
    initial_mask = {n: t.clone() for n, t in mask.items()} if mask_updater is not None else None
    mask_updates = 0
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
        if ("dst" in state) != (mask_updater is not None):
            raise TicketlabError(
                f"Checkpoint {str(checkpoint_path)!r} was written "
                + ("with" if "dst" in state else "without")
                + " a mask updater; resume with the same method or delete the checkpoint."
            )
        if mask_updater is not None:
            dst = state["dst"]
            mask_updater.load_state_dict(dst["updater"])
            for name, tensor in mask.items():
                if name not in dst["mask"] or dst["mask"][name].shape != tensor.shape:
                    raise TicketlabError(f"Checkpoint {str(checkpoint_path)!r} holds no mask for {name!r} of this shape.")
                tensor.copy_(dst["mask"][name])  # the caller's Mask follows the run
                initial_mask[name].copy_(dst["initial_mask"][name])
            mask_updates = dst["mask_updates"]
            bound.refresh()
        if metrics is not None:
            metrics.truncate_after(key, iteration)

    net: nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        if mask is not None:
            _check_ranks_share_mask(mask, "at the start of training")
        # DDP broadcasts rank 0's parameters and buffers here: all ranks start identical
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def run_eval() -> None:
        if distributed:
            dist_helpers.sync_buffers(model)  # per-rank BatchNorm statistics -> rank 0's
        val_loss, val_acc = evaluate(model, val_x, val_y)
        test_loss, test_acc = evaluate(model, test_x, test_y)
        record = {"iteration": iteration, "val_loss": val_loss, "val_accuracy": val_acc,
                  "test_loss": test_loss, "test_accuracy": test_acc}
        evals.append(record)
        if metrics is not None:
            metrics.append({**key, **record})
        if checkpoint_path is not None and iteration < total:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "torch_rng": torch.get_rng_state(), "iteration": iteration, "evals": evals,
                     "elapsed": elapsed + time.perf_counter() - started}
            if mask_updater is not None:
                state["dst"] = {"mask": {n: t.clone() for n, t in mask.items()}, "initial_mask": initial_mask,
                                "mask_updates": mask_updates, "updater": mask_updater.state_dict()}
            torch_save(state, checkpoint_path)

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
        start = position * config.batch_size + rank * local_batch  # this rank's slice of the global batch
        index = order[start: start + local_batch]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, iteration, ipe)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(train_x[index]), train_y[index])
        loss.backward()
        updating = schedule is not None and schedule.is_update(iteration + 1)
        captured = mask_updater.capture(bound) if updating else None  # dense (DDP-averaged) gradients
        if bound is not None:
            bound.zero_grads_()
        optimizer.step()
        if bound is not None:
            bound.zero_weights_()
        iteration += 1
        if updating:
            mask_updater.update_(bound, optimizer, iteration, captured)
            mask_updates += 1
            if distributed:
                _check_ranks_share_mask(mask, f"after the mask update at iteration {iteration}")
        if on_step is not None:
            on_step(iteration)
        if iteration % every == 0 or iteration == total:
            # every rank must reach the same verdict, so the check uses the loss summed over ranks
            if not torch.isfinite(dist_helpers.all_reduce_sum(loss.detach()) if distributed else loss):
                raise TicketlabError(f"Training diverged (loss {float(loss)}) at iteration {iteration}; lower --lr.")
            run_eval()
            model.train()
    if iteration in capture:
        capture[iteration](model)
    changed = _changed_fraction(initial_mask, mask) if mask_updater is not None else 0.0
    return TrainResult(evals=evals, wall_time=elapsed + time.perf_counter() - started,
                       mask_updates=mask_updates, mask_changed_fraction=changed)
