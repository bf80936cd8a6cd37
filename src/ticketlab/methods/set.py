"""SET (Mocanu et al. 2018, Sparse Evolutionary Training): grow at random.

Drop the smallest-magnitude kept weights, grow as many inactive weights chosen uniformly at random.
The randomness comes from one CPU `torch.Generator` seeded by the updater's seed and reset at the
start of every training run; its state goes into checkpoints so a resumed run draws the same
numbers. Every DDP rank builds the updater with the same seed, so all ranks grow the same weights.
"""

from __future__ import annotations

from typing import Any

import torch

from ..masks import BoundMask
from .dynamic import MaskUpdater


class SET(MaskUpdater):
    """Grow uniformly at random among the inactive weights, from a seeded generator."""

    name = "set"

    def __init__(self, config, *, seed: int):
        super().__init__(config, seed=seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def reset(self) -> None:
        self.generator.manual_seed(self.seed)

    def grow_scores(self, bound: BoundMask, captured: Any) -> dict[str, torch.Tensor]:
        """One float64 uniform draw per weight (float64: ties, broken by index, are then vanishingly rare)."""
        return {name: torch.rand(tuple(bound.mask[name].shape), generator=self.generator, dtype=torch.float64)
                for name in bound.mask}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


__all__ = ["SET"]
