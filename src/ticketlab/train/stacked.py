"""Train N masked networks of one architecture at once, each exactly as `train` would alone.

The networks (`StackedJob`: a model holding its start weights, its mask, its data seed, its
checkpoint and metrics key) become one `StackedNetwork` whose parameters carry a leading network
axis. Each step every network draws its own batch from its own data order (`epoch_order` of its
seed), the forward pass is one batched computation, the loss is the *sum* of the per-network mean
losses (so each network's gradient is the one it would get alone), and one optimiser step updates
all of them: SGD, Adam and AdamW are elementwise, so network i's slice of the optimiser state is
the state it would hold alone. The mask is the per-network masks stacked, applied through the same
`BoundMask` as a single run.

What stays per network is written per network, in the format a single run uses: metrics records,
and checkpoints holding network i's slice of the weights and optimiser state. So a stacked group
resumes from its checkpoints, and a network trained stacked can equally be resumed alone.

Tolerance: each network's result equals its sequential result up to floating-point reassociation
(batched instead of single matrix products, a per-row loss mean). The weights agree to about 1e-7
(relative to the largest weight) step after step — tests/test_stacked_training.py holds them to
1e-5 for SGD with momentum and Adam with weight decay — until a rounding-level difference meets a
ReLU kink (a pre-activation within rounding of zero); from then on the two trajectories drift
apart as two runs with any other summation order do (another thread count, another CPU). On
digits, 8 LeNet-300-100s, 200 Adam steps (benchmarks/stacked_training.py): largest relative
weight difference 4.8e-3, final test accuracies identical. The mask holds exactly: pruned weights
are ``+0.0`` in both. Stacked runs are deterministic on CPU: the same jobs give the same bits, in
any group (see `train_stacked`). On CUDA (an H200, same benchmark, CUDA-graph steps) the largest
relative weight difference from one-at-a-time CUDA training was 1.1e-4 with 8 networks and 2.1e-2
with 32 after 200 steps (the same with and without the graph), final test accuracies identical;
tests/test_stacked_training.py holds CUDA runs to 1e-4 over 30 steps. Convolutional networks on
CUDA run their convolutions in TF32 by default (``torch.backends.cudnn.allow_tf32``), whose
rounding (about 1e-3) differs between a grouped and a single convolution, so there stacked and
one-at-a-time runs agree to that precision, amplified by training (masked ResNet-20 on digits, 100
Adam steps with crop-and-flip on the H200: largest relative weight difference 2.0, final test
accuracies up to 8 points apart; on the CPU a 1e-7 relative change of its initial weights moves
its BatchNorm biases by 14% within 8 SGD steps); set ``allow_tf32 = False`` for float32 agreement.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataSplits
from ..data.augment import apply_stacked, check_augment_fits, draw_stacked
from ..errors import TicketlabError
from ..masks import BoundMask, Mask
from ..runs import MetricsLog
from .checkpoint import CheckpointState, Progress, read_checkpoint, save_checkpoint_state
from .config import TrainConfig
from .cuda_graph import CudaGraphStep, graph_obstacle, portable_optimizer_state
from .evaluation import TrainResult, check_finite_weights, evaluate_stacked
from .optim import build_optimizer, learning_rate
from .schedule import Budget, epoch_order
from .stacking import StackedNetwork, stack_networks


@dataclass
class StackedJob:
    """One network of a stacked group: ``model`` holds its start weights (and receives the final
    ones), ``mask`` its sparsity (None: dense), ``capture`` iteration -> callback given the model
    after that many iterations (the rewind point θk)."""

    model: nn.Module
    mask: Mask | None
    data_seed: int
    checkpoint_path: Path | None = None
    metrics_key: Mapping[str, Any] = field(default_factory=dict)
    capture: Mapping[int, Callable[[nn.Module], None]] = field(default_factory=dict)
    shadow: bool = False


def _shadow_of(job: StackedJob) -> StackedJob:
    """A copy of ``job`` that trains beside it and writes nothing (see `train_stacked`)."""
    return StackedJob(model=copy.deepcopy(job.model), mask=job.mask, data_seed=job.data_seed,
                      checkpoint_path=job.checkpoint_path, shadow=True)


def resume_iteration(checkpoint_path: Path | None, total: int) -> int | None:
    """The iteration the checkpoint at ``checkpoint_path`` stops at (None without one): networks
    stack only with networks that resume from the same iteration."""
    if checkpoint_path is None or not Path(checkpoint_path).exists():
        return None
    return read_checkpoint(Path(checkpoint_path), total=total).progress.iteration


def train_stacked(
    jobs: Sequence[StackedJob],
    data: DataSplits,
    config: TrainConfig,
    *,
    start_iteration: int = 0,
    device: torch.device | str = "cpu",
    metrics: MetricsLog | None = None,
    on_step: Callable[[int], None] | None = None,
    graphs: bool = True,
) -> list[TrainResult]:
    """Train every job's network from ``start_iteration`` to the end of the budget, all at once.

    Every job must resume from the same point: all without a checkpoint, or all with checkpoints
    at the same iteration (`resume_iteration`). Returns one `TrainResult` per job, in order; its
    ``wall_time`` is the group's time divided by the number of networks. On return each job's
    model holds its final weights.

    A network's bits do not depend on which others share its group nor on its place in it, so a
    run stacked differently — resumed with some units done, or spread over workers — ends with
    the same bits. That holds for every network but the last of a stacked tensor, whose final
    elements the vectorised elementwise kernels (the fused optimiser step) handle in their scalar
    tail, and for a network alone, whose batched products take another code path; so the group
    always ends with a shadow copy of its last network that writes nothing. Beside two or more
    networks the shadow only holds its slot in every tensor (no forward or backward pass: zero
    gradients, so it costs only its share of the elementwise optimiser step); beside one network
    it trains in full. All of this is about the CPU's bits: on a GPU, where the library chooses
    its kernels by problem size and no run is bit-for-bit repeatable, there is no shadow.

    On a CUDA device the step is recorded once as a CUDA graph and replayed (``graphs``; see
    `ticketlab.train.cuda_graph`): small networks are bound by kernel launches there, and the
    replay launches a whole step at once. ``graphs=False`` keeps every step eager.
    """
    if not jobs:
        raise TicketlabError("Stacked training needs at least one network.")
    check_augment_fits(config.augment, data.input_shape, data.name)
    device = torch.device(device)
    if device.type == "cpu" and not jobs[-1].shadow:
        return train_stacked([*jobs, _shadow_of(jobs[-1])], data, config, start_iteration=start_iteration,
                             device=device, metrics=metrics, on_step=on_step, graphs=graphs)[:len(jobs)]
    budget = Budget.resolve(data, config, start_iteration, distributed=False)
    group = _Group(jobs, data, config, device, budget, metrics, graphs)
    group.start(start_iteration)
    return group.loop(on_step)


def _stacked_mask(jobs: Sequence[StackedJob], stacked: StackedNetwork) -> Mask | None:
    """The jobs' masks stacked to ``(N, *shape)`` per parameter (a dense job contributes ones)."""
    names = next((list(job.mask) for job in jobs if job.mask is not None), None)
    if names is None:
        return None
    params = dict(stacked.named_parameters())
    layers = {}
    for name in names:
        shape = params[name].shape[1:] if name in params else None
        parts = [job.mask[name] if job.mask is not None else torch.ones(shape, dtype=torch.bool) for job in jobs]
        layers[name] = torch.stack([p.to(torch.bool).cpu() for p in parts])
    return Mask(layers)


def _stack_optimizer_states(states: Sequence[dict[str, Any]], params: Sequence[torch.Tensor]) -> dict[str, Any]:
    """One optimiser state dict for the stacked parameters from the N per-network ones.

    Per-weight buffers (momentum, exp_avg, ...) are stacked; scalars (Adam's ``step``) are the
    same in every network, which resumes from the same iteration, and are taken from the first.
    """
    merged: dict[int, dict[str, Any]] = {}
    for index, param in enumerate(params):
        entries = [s["state"].get(index) for s in states]
        if any(e is None for e in entries):
            continue
        merged[index] = {}
        for key, first in entries[0].items():
            values = [e[key] for e in entries]
            is_buffer = isinstance(first, torch.Tensor) and tuple(first.shape) == tuple(param.shape[1:])
            merged[index][key] = torch.stack(values) if is_buffer and first.dim() > 0 else first
    return {"state": merged, "param_groups": states[0]["param_groups"]}


def _network_optimizer_state(full: dict[str, Any], params: Sequence[torch.Tensor], index: int) -> dict[str, Any]:
    """Network ``index``'s slice of the stacked optimiser state ``full`` (its ``state_dict()``;
    ``params`` in its order), as the network's own optimiser would hold it."""
    state: dict[int, dict[str, Any]] = {}
    for key, entry in full["state"].items():
        param = params[key]
        state[key] = {name: (value[index].clone() if isinstance(value, torch.Tensor) and value.dim() > 0
                             and tuple(value.shape) == tuple(param.shape) else value)
                      for name, value in entry.items()}
    return {"state": state, "param_groups": full["param_groups"]}


class _Group:
    """The state of one `train_stacked` call: the stacked network, its optimiser, mask and files."""

    def __init__(self, jobs: Sequence[StackedJob], data: DataSplits, config: TrainConfig, device: torch.device,
                 budget: Budget, metrics: MetricsLog | None, graphs: bool = True):
        self.jobs, self.config, self.device, self.budget, self.metrics = list(jobs), config, device, budget, metrics
        self.stacked = stack_networks([job.model for job in self.jobs]).to(device)
        self.networks = len(self.jobs)
        self.real_networks = sum(not job.shadow for job in self.jobs)  # time is shared among these
        # beside two or more networks the shadow only holds its slot: no forward, no backward
        self.computed = self.real_networks if self.real_networks >= 2 else self.networks
        self.stacked.compute_only(self.computed if self.computed < self.networks else None)
        self.train_xy = (data.train_x.to(device), data.train_y.to(device))
        self.val_xy = (data.val_x.to(device), data.val_y.to(device))
        self.test_xy = (data.test_x.to(device), data.test_y.to(device))
        self.params = list(self.stacked.parameters())
        self.seeds = [job.data_seed for job in self.jobs]  # each network's batches augmented as alone
        self.optimizer = build_optimizer(self.params, config)
        mask = _stacked_mask(self.jobs, self.stacked)
        self.bound: BoundMask | None = mask.bind(self.stacked) if mask is not None else None
        self.progress = [Progress(iteration=0) for _ in self.jobs]
        self.iteration = 0
        self.started = time.perf_counter()
        recordable = graphs and graph_obstacle(device, self.stacked) is None
        self.graphed = CudaGraphStep(self._update, self.optimizer, device) if recordable else None

    # --- starting and resuming ----------------------------------------------------------------------
    def start(self, start_iteration: int) -> None:
        """Resume every network from its checkpoint, or start all of them at ``start_iteration``."""
        states = [self._read(job) for job in self.jobs]
        if any(s is not None for s in states):
            if any(s is None for s in states) or len({s.progress.iteration for s in states}) > 1:
                raise TicketlabError("Networks trained together must resume from checkpoints at the same iteration.")
            self._restore(states)
        else:
            for job in self.jobs:
                check_finite_weights(job.model)
            self.progress = [Progress(iteration=start_iteration) for _ in self.jobs]
        self.iteration = self.progress[0].iteration
        if self.bound is not None:
            self.bound.zero_weights_()
        if self.metrics is not None:
            for job, progress in zip(self.jobs, self.progress):
                if not job.shadow:
                    self.metrics.truncate_after(dict(job.metrics_key),
                                                progress.iteration if progress.evals else start_iteration - 1)
        self.started = time.perf_counter()

    def _read(self, job: StackedJob) -> CheckpointState | None:
        path = job.checkpoint_path
        return read_checkpoint(Path(path), total=self.budget.total) if path is not None and Path(path).exists() else None

    def _restore(self, states: Sequence[CheckpointState]) -> None:
        for job, state in zip(self.jobs, states):
            try:
                job.model.load_state_dict(state.model)
            except (RuntimeError, TypeError, AttributeError):
                raise TicketlabError(f"Checkpoint {str(job.checkpoint_path)!r} was written for another model; "
                                     "delete it to retrain this unit from its start.") from None
        self.stacked.load_network_states([job.model.state_dict() for job in self.jobs])
        try:
            self.optimizer.load_state_dict(_stack_optimizer_states([s.optimizer for s in states], self.params))
        except (RuntimeError, ValueError, TypeError, KeyError, AttributeError, IndexError):
            raise TicketlabError(f"Checkpoint {str(self.jobs[0].checkpoint_path)!r} holds an optimizer state that "
                                 "does not fit this run; delete it to retrain this unit from its start.") from None
        self.progress = [s.progress for s in states]

    # --- the loop -------------------------------------------------------------------------------
    def loop(self, on_step: Callable[[int], None] | None) -> list[TrainResult]:
        """Train to the end of the budget, evaluating every ``eval_every`` iterations."""
        budget = self.budget
        if not self.progress[0].evals:
            self.evaluate_and_save()
        orders, order_epoch = None, -1
        self.stacked.train()
        while self.iteration < budget.total:
            self._capture(self.iteration)
            epoch, position = divmod(self.iteration, budget.per_epoch)
            if epoch != order_epoch:
                orders, order_epoch = self._orders(epoch), epoch
            batch = self.config.batch_size
            losses = self.step(orders[:, position * batch: (position + 1) * batch])
            if on_step is not None:
                on_step(self.iteration)
            if self.iteration % budget.eval_every == 0 or self.iteration == budget.total:
                self._check_losses(losses)
                self.evaluate_and_save()
                self.stacked.train()
        self._capture(self.iteration)
        self._write_back()
        share = self.elapsed() / self.real_networks
        return [TrainResult(evals=p.evals, wall_time=p.elapsed + share)
                for p, job in zip(self.progress, self.jobs) if not job.shadow]

    def _orders(self, epoch: int) -> torch.Tensor:
        """``(N, n)``: every network's permutation of the training examples for ``epoch``."""
        n = len(self.train_xy[1])
        return torch.stack([epoch_order(job.data_seed, epoch, n) for job in self.jobs]).to(self.device)

    def step(self, index: torch.Tensor) -> torch.Tensor:
        """One optimiser step of every network on its examples ``index`` ``(N, b)``; returns the
        per-network losses ``(N,)`` (detached; a graphed step's until the next step)."""
        lr = learning_rate(self.config, self.iteration, self.budget.per_epoch)
        index = index[: self.computed]
        draws = draw_stacked(self.config.augment, self.seeds[: self.computed], self.iteration, index.shape[1])
        inputs = (index,) if draws is None else (index, *draws)
        if self.graphed is not None:
            losses = self.graphed(inputs, lr)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            losses = self._update(*inputs)
        self.iteration += 1
        return losses

    def _update(self, index: torch.Tensor, *draws: torch.Tensor) -> torch.Tensor:
        """Forward, backward and the masked optimiser step on examples ``index`` ``(computed, b)``,
        augmented by ``draws`` (`draw_stacked`); device work only, so that `CudaGraphStep` can
        record it. Returns the losses ``(computed,)``."""
        self.optimizer.zero_grad(set_to_none=True)
        x, y = self.train_xy
        inputs = apply_stacked(x[index], draws or None)
        logits = self.stacked(inputs)                                          # (N, b, classes)
        per_example = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[index].reshape(-1), reduction="none")
        losses = per_example.view(self.computed, -1).mean(dim=1)
        losses.sum().backward()   # network i's gradient is that of its own mean loss
        if self.bound is not None:
            self.bound.zero_grads_()
        self.optimizer.step()
        if self.bound is not None:
            self.bound.zero_weights_()
        return losses.detach()

    def _check_losses(self, losses: torch.Tensor) -> None:
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            index = int((~finite).nonzero()[0])
            key = ", ".join(f"{k} {v}" for k, v in self.jobs[index].metrics_key.items()) or f"network {index}"
            raise TicketlabError(f"Training diverged (the loss of {key} became {float(losses[index])}) at iteration "
                                 f"{self.iteration}; lower --lr.")

    def _capture(self, iteration: int) -> None:
        """Call the jobs' callbacks for ``iteration`` with their own model holding its current weights."""
        for index, job in enumerate(self.jobs):
            if iteration in job.capture:
                job.model.load_state_dict(self.stacked.network_state(index))
                job.capture[iteration](job.model)

    # --- evaluations, checkpoints, results ----------------------------------------------------------
    def evaluate_and_save(self) -> None:
        """Evaluate all networks on val and test, log one record each, checkpoint each (except after
        the last step)."""
        val = evaluate_stacked(self.stacked, *self.val_xy, self.computed)
        test = evaluate_stacked(self.stacked, *self.test_xy, self.computed)
        share = self.elapsed() / self.real_networks
        for index, job in enumerate(self.jobs[: self.computed]):
            if job.shadow:
                continue
            record = {"iteration": self.iteration, "val_loss": val[index][0], "val_accuracy": val[index][1],
                      "test_loss": test[index][0], "test_accuracy": test[index][1]}
            self.progress[index].evals.append(record)
            if self.metrics is not None:
                self.metrics.append({**dict(job.metrics_key), **record})
        if self.iteration >= self.budget.total:
            return
        optimizer_state = portable_optimizer_state(self.optimizer.state_dict())
        for index, job in enumerate(self.jobs):
            if job.checkpoint_path is not None and not job.shadow:
                progress = self.progress[index]
                saved = Progress(self.iteration, progress.evals, progress.elapsed + share)
                save_checkpoint_state(Path(job.checkpoint_path), self.stacked.network_state(index),
                                      _network_optimizer_state(optimizer_state, self.params, index), saved)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _write_back(self) -> None:
        """Each job's model receives its final weights and buffers."""
        for index, job in enumerate(self.jobs):
            job.model.load_state_dict(self.stacked.network_state(index))


__all__ = ["StackedJob", "resume_iteration", "train_stacked"]
