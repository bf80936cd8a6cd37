"""RigL (Evci et al. 2020, "Rigging the Lottery"): grow where the dense gradient is largest.

Drop the smallest-magnitude kept weights, grow the inactive weights with the largest ``|∇L|`` of
the current batch. The gradient must be *dense*: the trainer zeroes pruned gradients right after
``backward()``, so `capture` runs before that, on update iterations only (non-update steps pay
nothing). Because pruned weights are exactly zero, ``∂L/∂W_ij`` of a pruned entry is what the
gradient would be if the connection existed with value 0 (for a linear layer ``δ_i · x_j``), which
is the quantity RigL ranks.

Under DistributedDataParallel the gradients seen by `capture` are already all-reduced (averaged)
by DDP's backward, and an all-reduce hands every rank the same result, so every rank ranks the
same scores and takes the same decision (the trainer checks this after each update).
"""

from __future__ import annotations

import torch

from ..masks import BoundMask
from .dynamic import MaskUpdater


class RigL(MaskUpdater):
    """Grow by the largest dense gradient magnitude; deterministic (no random state)."""

    name = "rigl"

    @torch.no_grad()
    def capture(self, bound: BoundMask) -> list[torch.Tensor]:
        """``|∇L|`` of every masked weight (dense, same shape as the weight), copied before masking."""
        scores = []
        for param in bound.params:
            if param.grad is None:  # unused in this forward: no signal, so nothing is preferred
                scores.append(torch.zeros_like(param))
            else:
                scores.append(param.grad.detach().abs())  # abs() allocates: a copy, safe from masking
        return scores

    def grow_scores(self, bound: BoundMask, captured: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if captured is None:
            raise RuntimeError("RigL needs the dense gradients captured after backward (call capture first).")
        return dict(zip(bound.mask, captured))


__all__ = ["RigL"]
