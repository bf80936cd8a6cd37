"""The straight line between two trained networks, and the error barrier along it.

θ(α) = (1 − α)·θA + α·θB, computed with `torch.lerp`, which is exact at both ends (θ(0) = θA and
θ(1) = θB bit for bit) and gives θ(α) = θA exactly when θA = θB, so two identical networks have a
barrier of exactly 0. A weight that is zero in both networks (pruned by their common mask) stays
exactly zero at every α.

**BatchNorm.** Running statistics do not interpolate: the mean of two networks' running means is
not the mean of the interpolated network's activations, and evaluating with it overstates the
barrier of BN networks. So at *every* α (the endpoints included, so all points are measured the
same way) the running statistics of every BatchNorm layer are reset and recomputed from training
data: a cumulative average (``momentum=None``) over full batches of the first ``bn_examples``
training examples, in split order, in train mode without gradients. Networks without BatchNorm are
unaffected. The endpoint errors may therefore differ slightly from the copies' errors at the end of
training (whose running statistics are exponential averages over the last batches).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TicketlabError
from ..train import evaluate

State = dict[str, torch.Tensor]


def alphas(points: int) -> list[float]:
    """``points`` evenly spaced values from 0 to 1, both ends included (exactly 0.0 and 1.0)."""
    return [i / (points - 1) for i in range(points)]


def interpolate_states(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float) -> State:
    """θ(α) = (1 − α)·a + α·b for every floating tensor; integer buffers (BatchNorm's batch counter)
    are taken from ``a``. Both states must have the same keys and shapes."""
    if set(a) != set(b):
        raise TicketlabError("The two networks to interpolate hold different tensors.")
    out = {}
    for name, ta in a.items():
        tb = b[name]
        out[name] = torch.lerp(ta, tb.to(ta.dtype), alpha) if ta.is_floating_point() else ta.clone()
    return out


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Replace every BatchNorm layer's running statistics by their average over full batches of ``x``
    (``(N, *input_shape)``; a single batch when ``N < batch_size``); the model ends in eval mode with
    its layers' momentum unchanged. A no-op for a model without BatchNorm."""
    layers = batchnorm_layers(model)
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts the same
    model.train()
    step = min(batch_size, len(x))
    for start in range(0, len(x) - step + 1, step):
        model(x[start: start + step])
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.eval()


@dataclass(frozen=True)
class PathResult:
    """Test error (100 − accuracy, in points) and loss at each α, and the error barrier."""

    alphas: list[float]
    errors: list[float]
    losses: list[float]

    @property
    def endpoint_errors(self) -> tuple[float, float]:
        return self.errors[0], self.errors[-1]

    @property
    def max_error(self) -> float:
        return max(self.errors)

    @property
    def barrier(self) -> float:
        """max over the path of the error − the mean of the two endpoint errors (≥ 0)."""
        return error_barrier(self.errors)

    def to_json(self) -> dict:
        return {"alphas": self.alphas, "errors": self.errors, "losses": self.losses,
                "endpoint_errors": list(self.endpoint_errors), "max_error": self.max_error, "barrier": self.barrier}


def error_barrier(errors: Sequence[float]) -> float:
    """max(errors) − (errors[0] + errors[-1]) / 2: the rise of the error above the straight line's
    ends (Frankle et al. 2020); 0 for a flat path."""
    return max(errors) - (errors[0] + errors[-1]) / 2


def evaluate_path(build: Callable[[], nn.Module], a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
                  points: int, test: tuple[torch.Tensor, torch.Tensor],
                  bn_data: torch.Tensor, bn_batch_size: int, device: torch.device | str = "cpu") -> PathResult:
    """Evaluate θ(α) on ``test`` = (x, y) at ``points`` evenly spaced α; BatchNorm statistics are
    recomputed from ``bn_data`` at every α (see the module docstring). ``build()`` returns a fresh
    model of the networks' architecture."""
    model = build().to(device)
    x, y = test[0].to(device), test[1].to(device)
    bn_x = bn_data.to(device)
    errors, losses = [], []
    grid = alphas(points)
    for alpha in grid:
        model.load_state_dict(interpolate_states(a, b, alpha))
        recompute_batchnorm(model, bn_x, bn_batch_size)
        loss, accuracy = evaluate(model, x, y)
        errors.append(100.0 - accuracy)
        losses.append(loss)
    return PathResult(grid, errors, losses)
