"""The scientific controls that make a lottery ticket an experiment.

Each control keeps one ingredient of the ticket and destroys another:

* ``reinit``  -- same mask, fresh initialisation drawn from its own seed (is theta_0 special?);
* ``random``  -- a random mask with the ticket's per-layer densities, from the rewind point
  (is the mask's *structure* special?);
* ``shuffle`` -- the ticket's mask permuted within each layer, from the rewind point.

At a coarse granularity (a ``layout`` of blocks or channels) the controls keep it: ``random`` keeps
random whole groups with the ticket's count of groups in every family (a random channel ticket
removes random channels, as many per layer as the ticket), ``shuffle`` permutes the ticket's
kept/removed pattern of groups within each family. Both then keep exactly the ticket's weights
per layer wherever the counts determine them (always for channels and blocks). At N:M both draw a
random N of every M.
"""

from __future__ import annotations

import torch

from ..groups import GroupLayout
from ..masks import Mask
from ..methods import ScoringContext, random_scores
from ..seeding import generator
from ..select import GroupTarget, NMPattern, select, select_groups


def random_mask_like(mask: Mask, seed: int, *labels: object, layout: GroupLayout | None = None,
                     pattern: NMPattern | None = None) -> Mask:
    """A uniformly random mask with exactly ``mask``'s number of kept weights in every layer (with a
    ``layout``: of kept groups in every family; with an N:M ``pattern``: a random N of every M)."""
    draws = generator(seed, *labels)
    if pattern is not None:
        scores = random_scores(None, {n: t for n, t in mask.items()}, ScoringContext(generator=draws))
        return select(scores, pattern=pattern)
    if layout is not None:
        counts = {f.name: int(f.alive(dict(mask.items())).sum()) for f in layout}
        full = Mask.ones_like({n: t for n, t in mask.items()})
        return select_groups({}, layout, GroupTarget(per_family=counts), within=full, aggregate="random",
                             generator=draws)
    scores = random_scores(None, {n: t for n, t in mask.items()}, ScoringContext(generator=draws))
    counts = {n: int(t.sum()) for n, t in mask.items()}
    return select(scores, counts, scope="layer")


def shuffled_mask(mask: Mask, seed: int, *labels: object, layout: GroupLayout | None = None,
                  pattern: NMPattern | None = None) -> Mask:
    """``mask`` with its entries permuted within each layer (same per-layer density); with a
    ``layout``, its groups' kept/removed pattern permuted within each family; with an N:M
    ``pattern``, its kept entries permuted within each group of M (a random N:M mask)."""
    if pattern is not None:
        return random_mask_like(mask, seed, *labels, pattern=pattern)
    draws = generator(seed, *labels)
    if layout is None:
        return mask.shuffled(draws)
    tensors = {n: torch.ones_like(t) for n, t in mask.items()}
    for family in layout:
        alive = family.alive(dict(mask.items()))
        family.restrict(tensors, alive[torch.randperm(family.size, generator=draws)])
    return Mask(tensors)
