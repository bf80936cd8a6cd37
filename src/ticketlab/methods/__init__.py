"""Pruning methods: one module per method, each a scorer with the same signature.

A scorer maps ``(model, params, context)`` to a score tensor per prunable parameter (higher =
more worth keeping); `ticketlab.select.select` turns scores into a mask. Adding a method means
one new module plus one line in `SCORERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TicketlabError
from .magnitude import magnitude_scores
from .random import random_scores


@dataclass(frozen=True)
class ScoringContext:
    """What a scorer may use besides the weights: a seeded generator (and, later, data batches)."""

    generator: torch.Generator | None = None


Scorer = Callable[[nn.Module, Mapping[str, torch.Tensor], ScoringContext], dict[str, torch.Tensor]]

SCORERS: dict[str, Scorer] = {
    "magnitude": magnitude_scores,
    "random": random_scores,
}


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise TicketlabError(f"Unknown pruning method {name!r}; choose one of {', '.join(SCORERS)}.")
    return SCORERS[name]


__all__ = ["SCORERS", "Scorer", "ScoringContext", "get_scorer", "magnitude_scores", "random_scores"]
