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

At a coarse granularity (a ``layout`` of blocks or channels, `ticketlab.structure.layouts`) the same
scores are aggregated per group (`ticketlab.methods.GROUP_AGGREGATES`) and whole groups are kept
(`ticketlab.select.select_groups`); the density still counts weights: the global scope keeps at
most ``round_half_up(density · N)`` weights (whole groups, so at or just below), the layer scope
gives blocks the per-layer counts of the distribution and channels one common fraction per layer
(`GroupLayout.uniform_counts`). An N:M ``pattern`` keeps the N best of every M (SynFlow's
iterative schedule does not apply to a fixed pattern: it scores once).
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
from ..groups import BlockFamily, GroupLayout
from ..select import GroupTarget, NMPattern, density_to_count, select, select_groups
from . import GROUP_AGGREGATES, SCORERS, ScoringContext
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
                  context: ScoringContext, invert: bool = False, synflow_iterations: int = 100,
                  layout: GroupLayout | None = None, pattern: NMPattern | None = None) -> Mask:
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
        layout: groups pruned whole (blocks, channels; None: single weights).
        pattern: an N:M pattern instead (its density N/M; SynFlow then scores once).

    Returns a `Mask` over ``params`` keeping exactly ``round_half_up(density · N)`` weights overall
    (global), or exactly ``layer_keep_counts(...)[name]`` per layer (layer scope); with a ``layout``,
    whole groups as the module docstring says.
    """
    _validate(method, density, scope, distribution, synflow_iterations)
    params = dict(params)
    check_params(model, params)
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    if layout is not None:
        layout.check_covers(list(params))
        _group_target(layout, shapes, 1.0, scope, distribution)   # refuses what cannot apply, before scoring
    if pattern is not None:
        scores = SCORERS[method](model, params, context)
        return select(_negated(scores) if invert else scores, pattern=pattern)
    if method == "synflow":
        return _synflow_iterative(model, params, shapes, density, scope, distribution, context, invert,
                                  synflow_iterations, layout)
    scores = SCORERS[method](model, params, context)
    return _select(method, scores, shapes, density, scope, distribution, context, invert, layout)


def _select(method: str, scores: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], density: float,
            scope: str, distribution: str, context: ScoringContext, invert: bool, layout: GroupLayout | None,
            within: Mask | None = None, previous: Counts | None = None, final: Counts | None = None) -> Mask:
    """Scores -> mask at ``density``: single weights through `select`, groups through `select_groups`
    (``previous`` / ``final``: SynFlow's clamps on the counts of one of its rounds)."""
    if layout is None:
        counts = keep_counts(shapes, density, scope, distribution)
        if previous is not None and final is not None:
            counts = _between(counts, final, previous)
        return select(_negated(scores) if invert else scores, counts, scope=scope, within=within)  # type: ignore[arg-type]
    target = _group_target(layout, shapes, density, scope, distribution)
    if target.per_family is not None and isinstance(previous, dict) and isinstance(final, dict):
        target = GroupTarget(per_family=_between(dict(target.per_family), final, previous))
    return select_groups(scores, layout, target, within=within, aggregate=GROUP_AGGREGATES[method],
                         generator=context.generator, invert=invert)


def _group_target(layout: GroupLayout, shapes: Mapping[str, tuple[int, ...]], density: float, scope: str,
                  distribution: str) -> GroupTarget:
    """How many groups survive at ``density``: a weight budget (global), blocks per layer from the
    distribution's weight counts, or one common fraction of every family's channels (uniform only:
    the ER/ERK formulas are about single weights)."""
    if scope == "global":
        return GroupTarget(weights=density_to_count(density, layout.total_weights()))
    if all(isinstance(f, BlockFamily) for f in layout):
        weights = layer_keep_counts(shapes, density, distribution)
        return GroupTarget(per_family={f.name: math.floor(weights[f.name] / (f.rows * f.cols) + 0.5)
                                       for f in layout})  # type: ignore[attr-defined]
    if distribution != "uniform":
        raise TicketlabError(f"--distribution {distribution} spreads single weights; with channels the layer scope "
                             "keeps one common fraction of every layer's channels (--distribution uniform).")
    return GroupTarget(per_family=layout.uniform_counts(density))


def _synflow_iterative(model: nn.Module, params: dict[str, torch.nn.Parameter], shapes: dict[str, tuple[int, ...]],
                       density: float, scope: str, distribution: str, context: ScoringContext, invert: bool,
                       iterations: int, layout: GroupLayout | None = None) -> Mask:
    """K rounds of score-then-select within the current mask, density ρ^(k/K) at round k."""
    final, previous = _counts(layout, shapes, density, scope, distribution), _counts(layout, shapes, 1.0, scope,
                                                                                       distribution)
    mask = Mask.ones_like(params)
    for k in range(1, iterations + 1):
        step = density ** (k / iterations)
        scores = synflow_scores(model, params, context, mask=mask)
        mask = _select("synflow", scores, shapes, step, scope, distribution, context, invert, layout, within=mask,
                       previous=previous, final=final)
        previous = _between(_counts(layout, shapes, step, scope, distribution), final, previous) \
            if previous is not None and final is not None else None
    return mask


def _counts(layout: GroupLayout | None, shapes: dict[str, tuple[int, ...]], density: float, scope: str,
            distribution: str) -> Counts | None:
    """SynFlow's per-round counts to clamp: weights (single weights) or groups per family (a layer
    scope with groups); None where the target is a weight budget."""
    if layout is None:
        return keep_counts(shapes, density, scope, distribution)
    target = _group_target(layout, shapes, density, scope, distribution)
    return dict(target.per_family) if target.per_family is not None else None


__all__ = ["PAI_METHODS", "PAI_SCOPES", "keep_counts", "prune_at_init"]
