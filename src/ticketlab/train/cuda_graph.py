"""Replay a stacked training step as one CUDA graph.

A stacked group of small networks (N LeNet-300-100s) is bound by launches, not arithmetic: one
step is some sixty small kernels (forward, backward, masks, the fused optimiser), each of which the
host has to launch through Python, autograd and the dispatcher. A CUDA graph records those kernels
once and replays them with one call, so the host cost of a step no longer grows with its kernel
count (`torch.cuda.CUDAGraph`, "whole-network capture" in the PyTorch CUDA-semantics notes).

What the recorded step reads must live at fixed addresses: the step's inputs (the batch's example
indices ``(N, b)``, and with augmentation the crop offsets and flips drawn on the host) are copied
into static tensors on the device, and the learning rate becomes a one-element tensor on the device
(filled only when the schedule changes it) with the optimiser's ``capturable`` flag set, as
PyTorch's optimisers require for a captured ``step()``. The first `WARMUP_STEPS` steps run eagerly on
a side stream (lazy initialisation: optimiser state, cuBLAS workspaces), then the step is captured;
a capture that fails falls back to eager steps for the rest of the run, with the reason kept in
``fallback``.

The recorded kernels are the eager step's kernels, so a graphed group trains the same networks as
an eager one: the difference is the learning rate read from a float32 tensor instead of a double
argument (which the fused kernels round to float32 anyway). Checkpoints hold a plain optimiser
state (`portable_optimizer_state`), so a graphed run resumes eagerly, on the CPU, or alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: Eager steps before the capture (PyTorch's notes use three).
WARMUP_STEPS = 3


class CudaGraphStep:
    """One training step ``body(*inputs) -> losses (N,)``, run eagerly for the first
    `WARMUP_STEPS` calls and replayed from a CUDA graph after that.

    ``body`` must do the whole step (zero the gradients, forward, backward, optimiser step) with
    nothing but device work: no host reads of device values, no shapes that change between calls.
    ``inputs`` are tensors of fixed shapes (on the host or the device); a replay copies them into
    the graph's own.
    """

    def __init__(self, body: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer,
                 device: torch.device):
        self.body, self.optimizer, self.device = body, optimizer, device
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.fallback: str | None = None
        self.side = torch.cuda.Stream(device)
        self.static_inputs: tuple[torch.Tensor, ...] = ()
        self.static_losses: torch.Tensor | None = None
        self.lr_tensor: torch.Tensor | None = None
        self.lr_value: float | None = None

    def __call__(self, inputs: tuple[torch.Tensor, ...], lr: float) -> torch.Tensor:
        """One step on ``inputs`` at learning rate ``lr``; returns the losses ``(N,)`` (a graphed
        step's are overwritten by the next step: read them before)."""
        if self.graph is not None and [t.shape for t in inputs] == [t.shape for t in self.static_inputs]:
            return self._replay(inputs, lr)
        losses = self._eager(inputs, lr)
        if self.graph is None and self.fallback is None and self.eager_steps >= WARMUP_STEPS:
            self._capture(inputs, lr)
        return losses

    def _eager(self, inputs: tuple[torch.Tensor, ...], lr: float) -> torch.Tensor:
        self._set_groups(lr, capturable=False)
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            losses = self.body(*inputs)
        current.wait_stream(self.side)
        self.eager_steps += 1
        return losses

    def _capture(self, inputs: tuple[torch.Tensor, ...], lr: float) -> None:
        self.static_inputs = tuple(t.to(self.device, copy=True) for t in inputs)
        self.lr_tensor = torch.tensor(float(lr), dtype=torch.float32, device=self.device)
        self.lr_value = float(lr)
        self._set_groups(self.lr_tensor, capturable=True)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        try:
            with torch.cuda.graph(graph):
                self.static_losses = self.body(*self.static_inputs)
        except (RuntimeError, TypeError, ValueError) as error:
            self.fallback = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            self.static_inputs, self.static_losses, self.lr_tensor = (), None, None
            self._set_groups(lr, capturable=False)
            warnings.warn(f"CUDA graph capture of the stacked training step failed ({self.fallback}); "
                          "the group goes on without graphs.", RuntimeWarning, stacklevel=3)
            return
        self.graph = graph

    def _replay(self, inputs: tuple[torch.Tensor, ...], lr: float) -> torch.Tensor:
        for static, given in zip(self.static_inputs, inputs):
            static.copy_(given)
        if float(lr) != self.lr_value:
            self.lr_tensor.fill_(float(lr))
            self.lr_value = float(lr)
        self.graph.replay()
        return self.static_losses

    def _set_groups(self, lr: float | torch.Tensor, capturable: bool) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if "capturable" in group:
                group["capturable"] = capturable


def portable_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` (an optimiser's ``state_dict()``) with the graph's settings undone: a float
    learning rate and ``capturable`` off, as an eager run saves it (so any trainer resumes it)."""
    groups = []
    for group in state["param_groups"]:
        group = dict(group)
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
        if "capturable" in group:
            group["capturable"] = False
        groups.append(group)
    return {**state, "param_groups": groups}


def graph_obstacle(device: torch.device, model: nn.Module) -> str | None:
    """Why the steps of ``model`` on ``device`` cannot be one recorded graph (None: they can).

    Off the GPU there is nothing to record; a BatchNorm with a cumulative average (``momentum=None``)
    reads its batch count on the host. (Augmentation is recorded: its draws are step inputs.)
    """
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    for name, module in model.named_modules():
        if getattr(module, "track_running_stats", False) and getattr(module, "momentum", 0.1) is None:
            return f"BatchNorm {name!r} keeps a cumulative average"
    return None


__all__ = ["CudaGraphStep", "WARMUP_STEPS", "graph_obstacle", "portable_optimizer_state"]
