"""Measuring a network during training: loss and accuracy on a split (one network, or N stacked
ones at once), the result record of a run, and the checks that its numbers are finite."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TicketlabError


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


@torch.no_grad()
def evaluate_stacked(stacked: nn.Module, x: torch.Tensor, y: torch.Tensor, networks: int,
                     batch_size: int = 2048) -> list[tuple[float, float]]:
    """`evaluate` for N stacked networks (`ticketlab.train.stacking.StackedNetwork`) on the same
    ``(x, y)``: one (mean cross-entropy, accuracy in %) per network; model left in eval mode."""
    stacked.eval()
    loss_sums = torch.zeros(networks, dtype=torch.float64)
    correct = torch.zeros(networks, dtype=torch.int64)
    for start in range(0, len(y), batch_size):
        chunk = x[start: start + batch_size]
        target = y[start: start + batch_size]
        logits = stacked(chunk.unsqueeze(0).expand(networks, *chunk.shape))      # (N, b, classes)
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.repeat(networks), reduction="none")
        loss_sums += losses.view(networks, -1).sum(1).double().cpu()
        correct += (logits.argmax(dim=2) == target).sum(1).cpu()
    n = max(1, len(y))
    return [(float(loss_sums[i]) / n, 100.0 * int(correct[i]) / n) for i in range(networks)]


def check_finite_weights(model: nn.Module) -> None:
    """The weights training starts from must be finite (NaN in, NaN out: no learning rate helps)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TicketlabError(
                f"The weights training starts from hold NaN or infinite values (first in {name!r}); "
                "the initial or rewind weights file is damaged."
            )


__all__ = ["TrainResult", "check_finite_weights", "evaluate", "evaluate_stacked"]
