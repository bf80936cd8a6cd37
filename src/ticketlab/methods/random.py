"""Random pruning: i.i.d. uniform scores from the context's seeded generator (a control, not a method)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError


def random_scores(model: nn.Module, params: Mapping[str, torch.Tensor], context: Any) -> dict[str, torch.Tensor]:
    """Uniform [0, 1) scores drawn on CPU from ``context.generator`` (required, for repeatability)."""
    generator = getattr(context, "generator", None)
    if generator is None:
        raise TicketlabError("Random scores need a seeded torch.Generator in the scoring context.")
    return {name: torch.rand(p.shape, generator=generator) for name, p in params.items()}
