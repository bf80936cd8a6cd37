"""Magnitude pruning: a weight's score is its absolute value (Han et al. 2015; IMP's criterion)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def magnitude_scores(model: nn.Module, params: Mapping[str, torch.Tensor], context: Any = None) -> dict[str, torch.Tensor]:
    """``|w|`` for every parameter in ``params`` (same shapes, detached)."""
    return {name: p.detach().abs() for name, p in params.items()}
