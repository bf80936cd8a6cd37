"""Pruning methods: one module per method, each a scorer with the same signature.

A scorer maps ``(model, params, context)`` to a score tensor per prunable parameter (same shape,
higher = more worth keeping); `ticketlab.select.select` turns scores into a mask. Adding a method
means one new module plus one line in `SCORERS`.

* ``magnitude``: ``|w|`` (IMP's criterion; at init it is "magnitude at initialisation").
* ``random``: i.i.d. uniform scores from the context's seeded generator.
* ``snip``: ``|g ⊙ w|`` over the context's batches (Lee et al. 2019).
* ``grasp``: ``θ ⊙ Hg`` — the *negated* GraSP score, so that higher = keep (Wang et al. 2020).
* ``synflow``: ``|∂R/∂θ ⊙ θ|`` of the linearised network on an all-ones input (Tanaka et al. 2020);
  one scoring pass — the iterative schedule lives in `ticketlab.methods.pai.prune_at_init`.

Scorers never change the model: weights, buffers, ``requires_grad`` flags, ``.grad`` and the
train/eval mode are exactly as found afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TicketlabError
from .grasp import grasp_scores
from .magnitude import magnitude_scores
from .random import random_scores
from .snip import snip_scores
from .synflow import synflow_scores


@dataclass(frozen=True)
class ScoringContext:
    """What a scorer may use besides the weights.

    Attributes:
        generator: seeded CPU generator (required by ``random``; randomness only enters here).
        batches: ``(x, y)`` batches for the data-driven scorers (SNIP, GraSP): ``x`` of shape
            ``(N, *input_shape)`` on the model's device, ``y`` int64 class ids of shape ``(N,)``.
            The caller chooses how many (SNIP/GraSP sum their gradients over all of them).
        input_shape: one example's shape without the batch dimension, for SynFlow's all-ones
            input; when ``None`` SynFlow falls back to ``batches[0][0].shape[1:]``, then to the
            model's ``input_shape`` attribute (every registry model has one).
        grasp_temperature: GraSP divides the logits by this before the loss (T = 200 in the paper).
        synflow_double: score SynFlow in float64; deep nets (resnet20, vgg16) can overflow float32
            because SynFlow's scores are products of absolute weights along every path.
    """

    generator: torch.Generator | None = None
    batches: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()
    input_shape: tuple[int, ...] | None = None
    grasp_temperature: float = 200.0
    synflow_double: bool = False

    def __post_init__(self) -> None:
        # Accept lists for convenience but store tuples, so the frozen context stays immutable.
        try:
            batches = tuple((x, y) for x, y in self.batches)
        except (TypeError, ValueError):
            raise TicketlabError("The scoring batches must be a sequence of (inputs, labels) pairs.") from None
        object.__setattr__(self, "batches", batches)
        if self.input_shape is not None:
            try:
                shape = tuple(int(d) for d in self.input_shape)
            except (TypeError, ValueError):
                shape = ()
            if not shape or any(d < 1 for d in shape):
                raise TicketlabError(
                    f"The input shape must be a non-empty tuple of positive sizes, not {self.input_shape!r}.")
            object.__setattr__(self, "input_shape", shape)
        if not self.grasp_temperature > 0:
            raise TicketlabError(f"The GraSP temperature must be positive (got {self.grasp_temperature}).")


Scorer = Callable[[nn.Module, Mapping[str, torch.Tensor], ScoringContext], dict[str, torch.Tensor]]

SCORERS: dict[str, Scorer] = {
    "magnitude": magnitude_scores,
    "random": random_scores,
    "snip": snip_scores,
    "grasp": grasp_scores,
    "synflow": synflow_scores,
}


#: How each scorer's per-weight scores become one score per group (a block, a channel, a head) at a
#: coarse granularity (`ticketlab.select.select_groups`): magnitude takes the L2 norm of the group's
#: weights (Li et al.'s filter norm, Torch-Pruning's magnitude importance); the saliencies (SNIP,
#: GraSP, SynFlow) are first-order estimates of what removing a weight costs, so a group's is their
#: sum; random draws one uniform score per group (a random group, not a sum of random weights).
GROUP_AGGREGATES: dict[str, str] = {"magnitude": "l2", "random": "random", "snip": "sum", "grasp": "sum",
                                    "synflow": "sum"}


def group_aggregate(name: str) -> str:
    """How scorer ``name``'s scores aggregate over a group (`GROUP_AGGREGATES`)."""
    get_scorer(name)
    return GROUP_AGGREGATES[name]


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise TicketlabError(f"Unknown pruning method {name!r}; choose one of {', '.join(SCORERS)}.")
    return SCORERS[name]


__all__ = ["GROUP_AGGREGATES", "SCORERS", "Scorer", "ScoringContext", "get_scorer", "group_aggregate", "grasp_scores", "magnitude_scores",
           "random_scores", "snip_scores", "synflow_scores"]
