"""Pruning at initialisation: the one entry point for SNIP, GraSP, SynFlow, magnitude and random.

``prune_at_init`` scores the prunable weights with a registered scorer and hands the scores to the
one selection routine, `ticketlab.select.select`:

* ``scope="global"``: one ranking over all layers keeps ``round_half_up(density · N)`` weights;
* ``scope="layer"``: each layer keeps the count given by
  `ticketlab.densities.layer_keep_counts` for the ``distribution`` (uniform, er, erk). The
  distribution is ignored by the global scope (but still validated).

SynFlow is iterative (Tanaka et al. 2020): ``K = synflow_iterations`` rounds; round ``k = 1..K``
scores the network with the current mask applied and keeps, *within* that mask, the count for
density ``ρ^(k/K)`` — so the last round lands exactly on ``ρ``. Every other method scores once.

``invert=True`` is the inversion sanity check of Frankle et al. (2021): keep the lowest-scoring
weights instead of the highest (same counts); for SynFlow the scores of every round are inverted,
as in the reference code. A collapsed layer (every weight pruned) is not refused here: the caller
inspects `Mask.collapsed_layers()` and decides.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import nn

from ..densities import DISTRIBUTIONS, layer_keep_counts
from ..errors import TicketlabError
from ..masks import Mask
from ..select import density_to_count, select
from . import SCORERS, ScoringContext
from .snip import check_params
from .synflow import synflow_scores

PAI_METHODS: tuple[str, ...] = ("snip", "grasp", "synflow", "magnitude", "random")
PAI_SCOPES: tuple[str, ...] = ("global", "layer")

Counts = int | dict[str, int]


def keep_counts(shapes: Mapping[str, tuple[int, ...]], density: float, scope: str, distribution: str) -> Counts:
    """What `select` keeps at ``density``: one total (global) or a count per layer (layer)."""
    if scope == "global":
        return density_to_count(density, sum(math.prod(s) for s in shapes.values()))
    return layer_keep_counts(shapes, density, distribution)


def _between(counts: Counts, low: Counts, high: Counts) -> Counts:
    """``counts`` clamped to ``[low, high]`` (per layer for dicts).

    Rounding can make an intermediate per-layer count tick up by one while the density goes down;
    clamping to the previous round's count (high) keeps masks only shrinking, and to the final
    count (low) makes sure the last round can still reach it.
    """
    if isinstance(counts, int):
        assert isinstance(low, int) and isinstance(high, int)
        return max(low, min(high, counts))
    assert isinstance(low, dict) and isinstance(high, dict)
    return {name: max(low[name], min(high[name], c)) for name, c in counts.items()}


def _negated(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: -s for name, s in scores.items()}


def _validate(method: str, density: float, scope: str, distribution: str, synflow_iterations: int) -> None:
    if method not in PAI_METHODS:
        raise TicketlabError(f"Unknown pruning-at-initialisation method {method!r}; "
                             f"choose one of {', '.join(PAI_METHODS)}.")
    if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0.0 < density <= 1.0:
        raise TicketlabError(f"A density must be a number in (0, 1] (got {density!r}).")
    if scope not in PAI_SCOPES:
        raise TicketlabError(f"Unknown scope {scope!r} for pruning at initialisation; "
                             f"choose one of {', '.join(PAI_SCOPES)}.")
    if distribution not in DISTRIBUTIONS:
        raise TicketlabError(f"Unknown density distribution {distribution!r}; "
                             f"choose one of {', '.join(DISTRIBUTIONS)}.")
    if isinstance(synflow_iterations, bool) or not isinstance(synflow_iterations, int) or synflow_iterations < 1:
        raise TicketlabError(f"SynFlow needs a whole number of iterations of at least 1 "
                             f"(got {synflow_iterations!r}).")


def prune_at_init(model: nn.Module, params: Mapping[str, torch.nn.Parameter], density: float, *,
                  method: str, scope: str = "global", distribution: str = "uniform",
                  context: ScoringContext, invert: bool = False, synflow_iterations: int = 100) -> Mask:
    """The mask that ``method`` chooses for ``model`` at ``density``, before any training.

    Args:
        model: the network at initialisation; left exactly as found (weights, buffers,
            ``requires_grad``, ``.grad``, train/eval mode of every module).
        params: name -> prunable parameter of ``model`` (e.g. `prunable_parameters(model)`); the
            mask covers exactly these names.
        density: fraction of the weights in ``params`` to keep, in (0, 1].
        method: one of `PAI_METHODS`.
        scope: ``"global"`` or ``"layer"``.
        distribution: per-layer densities for the layer scope: ``uniform``, ``er`` or ``erk``.
        context: generator (random), batches (snip, grasp), input shape / double (synflow).
        invert: keep the lowest-scoring weights instead (Frankle et al. 2021 sanity check).
        synflow_iterations: SynFlow's number of rounds K (ignored by the other methods).

    Returns a `Mask` over ``params`` keeping exactly ``round_half_up(density · N)`` weights overall
    (global), or exactly ``layer_keep_counts(...)[name]`` per layer (layer scope).
    """
    _validate(method, density, scope, distribution, synflow_iterations)
    params = dict(params)
    check_params(model, params)
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    if method == "synflow":
        return _synflow_iterative(model, params, shapes, density, scope, distribution, context, invert,
                                  synflow_iterations)
    scores = SCORERS[method](model, params, context)
    return select(_negated(scores) if invert else scores, keep_counts(shapes, density, scope, distribution),
                  scope=scope)  # type: ignore[arg-type]


def _synflow_iterative(model: nn.Module, params: dict[str, torch.nn.Parameter], shapes: dict[str, tuple[int, ...]],
                       density: float, scope: str, distribution: str, context: ScoringContext, invert: bool,
                       iterations: int) -> Mask:
    """K rounds of score-then-select within the current mask, density ρ^(k/K) at round k."""
    final = keep_counts(shapes, density, scope, distribution)
    previous = keep_counts(shapes, 1.0, scope, distribution)
    mask = Mask.ones_like(params)
    for k in range(1, iterations + 1):
        counts = _between(keep_counts(shapes, density ** (k / iterations), scope, distribution), final, previous)
        scores = synflow_scores(model, params, context, mask=mask)
        mask = select(_negated(scores) if invert else scores, counts,  # type: ignore[arg-type]
                      scope=scope, within=mask)
        previous = counts
    return mask


__all__ = ["PAI_METHODS", "PAI_SCOPES", "keep_counts", "prune_at_init"]
