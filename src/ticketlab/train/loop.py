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
  every rank its own run directory, see `ticketlab.units.claim_for_process`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataSplits
from ..data.augment import augment_batch, check_augment_fits
from ..errors import TicketlabError
from ..masks import BoundMask, Mask, mask_fingerprint
from ..runs import MetricsLog
from .checkpoint import Progress, restore_checkpoint, save_checkpoint
from . import distributed as dist_helpers
from .config import TrainConfig
from .evaluation import TrainResult, check_finite_weights, evaluate
from .optim import build_optimizer, learning_rate
from .schedule import Budget, epoch_order

if TYPE_CHECKING:
    from ..methods.dynamic import MaskUpdater

def _changed_fraction(initial: Mapping[str, torch.Tensor], final: Mask) -> float:
    """|initial minus final| / |initial| over all layers (0 when nothing was kept)."""
    kept = sum(int(t.sum()) for t in initial.values())
    lost = sum(int((initial[n] & ~final[n]).sum()) for n in final)
    return lost / kept if kept else 0.0


def _check_ranks_share_mask(mask: Mask, when: str) -> None:
    """Every rank must hold the same mask; all ranks reach the same verdict (no hang)."""
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
    on_evaluation: Callable[[int, nn.Module], bool] | None = None,
) -> TrainResult:
    """Train ``model`` in place from ``start_iteration`` to the end of the budget (or an earlier stop).

    Args:
        data: in-memory splits; the training split is shuffled per epoch from ``data_seed``.
        mask: pruned weights are zeroed first and stay exactly zero (gradients, optimiser state
            and weights are masked around every step).
        mask_updater: RigL or SET (`ticketlab.methods.updaters.make_updater`); needs ``mask``,
            which it rewires *in place*, so after `train` returns ``mask`` is the final mask.
            Per-layer kept counts never change.
        start_iteration: where training starts (late rewinding resumes the schedule and data
            order at the rewind step, with a fresh optimiser).
        device: where to train; under torchrun ``cuda`` means ``cuda:LOCAL_RANK``.
        checkpoint_path: if given, a checkpoint (`ticketlab.train.checkpoint`) is written at every
            evaluation and, if it exists at the start, training resumes from it. The caller
            deletes it once it has stored the result, so a kill between the two only costs
            recomputation. Under torchrun each rank writes and reads the path it is given.
        metrics, metrics_key: every evaluation is appended to ``metrics`` with ``metrics_key``;
            records of this key that a resumed run is about to write again are dropped first.
        capture: iteration -> callback given the model after that many iterations (used to save
            the rewind point theta_k); called on every rank with the unwrapped model.
        on_step: called with the number of iterations done after every step (progress bars).
        on_evaluation: called on every rank after every evaluation (the one before the first step
            included; a resumed run does not repeat its checkpoint's) with the iteration and the
            unwrapped model, *before* that evaluation's checkpoint is written. True stops training
            there: no checkpoint is written for it, ``capture`` callbacks for that iteration still
            run, and the result's last evaluation (``final``, ``final["iteration"]``) is the stop.
            A run resumed from an earlier checkpoint trains to the same weights and calls it again.
    """
    check_augment_fits(config.augment, data.input_shape, data.name)
    distributed = dist_helpers.init_from_env(torch.device(device))
    device = dist_helpers.rank_device(torch.device(device))
    budget = Budget.resolve(data, config, start_iteration, distributed)
    if mask_updater is not None and mask is None:
        raise TicketlabError("Dynamic sparse training (a mask updater) needs an initial mask to update.")
    run = _Run(model, data, config, device, mask, mask_updater, budget, metrics, dict(metrics_key or {}),
               Path(checkpoint_path) if checkpoint_path is not None else None)
    run.start(start_iteration)
    return run.loop(data_seed, distributed, dict(capture or {}), on_step, on_evaluation)


class _Run:
    """The state of one `train` call: model, optimiser, mask, where training stands, and its files."""

    def __init__(self, model: nn.Module, data: DataSplits, config: TrainConfig, device: torch.device,
                 mask: Mask | None, mask_updater: "MaskUpdater | None", budget: Budget,
                 metrics: MetricsLog | None, key: dict[str, Any], checkpoint: Path | None):
        self.model, self.config, self.device, self.budget = model, config, device, budget
        self.mask, self.updater, self.metrics, self.key, self.checkpoint = mask, mask_updater, metrics, key, checkpoint
        model.to(device)
        self.train_xy = (data.train_x.to(device), data.train_y.to(device))
        self.val_xy = (data.val_x.to(device), data.val_y.to(device))
        self.test_xy = (data.test_x.to(device), data.test_y.to(device))
        self.optimizer = build_optimizer(model.parameters(), config)
        self.bound: BoundMask | None = mask.bind(model) if mask is not None else None
        self.schedule = mask_updater.start(budget.total, budget.per_epoch) if mask_updater is not None else None
        self.initial_mask = {n: t.clone() for n, t in mask.items()} if mask_updater is not None else None
        self.progress = Progress(iteration=0)
        self.started = time.perf_counter()

    def start(self, start_iteration: int) -> None:
        """Resume from the checkpoint if there is one; otherwise start at ``start_iteration``."""
        if self.bound is not None:
            self.bound.zero_weights_()
        if self.checkpoint is not None and self.checkpoint.exists():
            self.progress = restore_checkpoint(self.checkpoint, self.model, self.optimizer, total=self.budget.total,
                                               mask=self.mask, initial_mask=self.initial_mask,
                                               mask_updater=self.updater)
            if self.bound is not None:
                self.bound.refresh()
        else:
            check_finite_weights(self.model)
            self.progress = Progress(iteration=start_iteration)
        if self.metrics is not None:  # drop what this run is about to write again (and torn lines)
            self.metrics.truncate_after(self.key, self.progress.iteration if self.progress.evals else start_iteration - 1)
        self.started = time.perf_counter()

    def evaluate_and_save(self, distributed: bool, on_evaluation: Callable[[int, nn.Module], bool] | None = None) -> bool:
        """Evaluate on val and test, log the record, ask ``on_evaluation`` whether to stop, and
        checkpoint (except after the last step or at a stop); return True to stop."""
        if distributed:
            dist_helpers.sync_buffers(self.model)  # per-rank BatchNorm statistics -> rank 0's
        val_loss, val_acc = evaluate(self.model, *self.val_xy)
        test_loss, test_acc = evaluate(self.model, *self.test_xy)
        record = {"iteration": self.progress.iteration, "val_loss": val_loss, "val_accuracy": val_acc,
                  "test_loss": test_loss, "test_accuracy": test_acc}
        self.progress.evals.append(record)
        if self.metrics is not None:
            self.metrics.append({**self.key, **record})
        stop = bool(on_evaluation(self.progress.iteration, self.model)) if on_evaluation is not None else False
        if self.checkpoint is not None and not stop and self.progress.iteration < self.budget.total:
            saved = Progress(self.progress.iteration, self.progress.evals, self.elapsed(), self.progress.mask_updates)
            save_checkpoint(self.checkpoint, self.model, self.optimizer, saved, self._dst_state())
        return stop

    def _dst_state(self) -> dict[str, Any] | None:
        if self.updater is None:
            return None
        return {"mask": {n: t.clone() for n, t in self.mask.items()}, "initial_mask": self.initial_mask,
                "mask_updates": self.progress.mask_updates, "updater": self.updater.state_dict()}

    def elapsed(self) -> float:
        return self.progress.elapsed + time.perf_counter() - self.started

    def step(self, net: nn.Module, index: torch.Tensor, data_seed: int, first: int = 0) -> torch.Tensor:
        """One optimiser step on the examples ``index`` (rows ``first :`` of the global batch,
        augmented per ``config.augment`` from ``(data_seed, iteration)``); returns the (detached) loss."""
        config, iteration = self.config, self.progress.iteration
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, iteration, self.budget.per_epoch)
        self.optimizer.zero_grad(set_to_none=True)
        x, y = self.train_xy
        inputs = augment_batch(x[index], config.augment, data_seed, iteration, first=first, total=config.batch_size)
        loss = F.cross_entropy(net(inputs), y[index])
        loss.backward()
        updating = self.schedule is not None and self.schedule.is_update(iteration + 1)
        captured = self.updater.capture(self.bound) if updating else None  # dense (DDP-averaged) gradients
        if self.bound is not None:
            self.bound.zero_grads_()
        self.optimizer.step()
        if self.bound is not None:
            self.bound.zero_weights_()
        self.progress.iteration += 1
        if updating:
            self.updater.update_(self.bound, self.optimizer, self.progress.iteration, captured)
            self.progress.mask_updates += 1
        return loss.detach()

    def loop(self, data_seed: int, distributed: bool, capture: dict[int, Callable[[nn.Module], None]],
             on_step: Callable[[int], None] | None,
             on_evaluation: Callable[[int, nn.Module], bool] | None = None) -> TrainResult:
        """Train to the end of the budget (or a stop), evaluating every ``eval_every`` iterations."""
        budget, model = self.budget, self.model
        net: nn.Module = model
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            if self.mask is not None:
                _check_ranks_share_mask(self.mask, "at the start of training")
            # DDP broadcasts rank 0's parameters and buffers here: all ranks start identical
            net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        stopped = self.evaluate_and_save(distributed, on_evaluation) if not self.progress.evals else False
        local_batch = self.config.batch_size // budget.world
        order, order_epoch = None, -1
        model.train()
        while not stopped and self.progress.iteration < budget.total:
            iteration = self.progress.iteration
            if iteration in capture:
                capture[iteration](model)
            epoch, position = divmod(iteration, budget.per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(data_seed, epoch, len(self.train_xy[1])).to(self.device), epoch
            start = position * self.config.batch_size + budget.rank * local_batch  # this rank's slice
            loss = self.step(net, order[start: start + local_batch], data_seed, budget.rank * local_batch)
            iteration = self.progress.iteration
            if self.schedule is not None and distributed and self.schedule.is_update(iteration):
                _check_ranks_share_mask(self.mask, f"after the mask update at iteration {iteration}")
            if on_step is not None:
                on_step(iteration)
            if iteration % budget.eval_every == 0 or iteration == budget.total:
                self._check_loss(loss, distributed)
                stopped = self.evaluate_and_save(distributed, on_evaluation)
                model.train()
        if self.progress.iteration in capture:
            capture[self.progress.iteration](model)
        changed = _changed_fraction(self.initial_mask, self.mask) if self.updater is not None else 0.0
        return TrainResult(evals=self.progress.evals, wall_time=self.elapsed(),
                           mask_updates=self.progress.mask_updates, mask_changed_fraction=changed)

    def _check_loss(self, loss: torch.Tensor, distributed: bool) -> None:
        """Every rank must reach the same verdict, so the check uses the loss summed over ranks."""
        if not torch.isfinite(dist_helpers.all_reduce_sum(loss) if distributed else loss):
            raise TicketlabError(
                f"Training diverged (the loss became {float(loss)}) at iteration {self.progress.iteration}; "
                "lower --lr."
            )
