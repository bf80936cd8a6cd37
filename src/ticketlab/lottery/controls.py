"""The scientific controls that make a lottery ticket an experiment.

Each control keeps one ingredient of the ticket and destroys another:

* ``reinit``  -- same mask, fresh initialisation drawn from its own seed (is theta_0 special?);
* ``random``  -- a random mask with the ticket's per-layer densities, from the rewind point
  (is the mask's *structure* special?);
* ``shuffle`` -- the ticket's mask permuted within each layer, from the rewind point.
"""

from __future__ import annotations

from ..masks import Mask
from ..methods import ScoringContext, random_scores
from ..seeding import generator
from ..select import select


def random_mask_like(mask: Mask, seed: int, *labels: object) -> Mask:
    """A uniformly random mask with exactly ``mask``'s number of kept weights in every layer."""
    context = ScoringContext(generator=generator(seed, *labels))
    scores = random_scores(None, {n: t for n, t in mask.items()}, context)
    counts = {n: int(t.sum()) for n, t in mask.items()}
    return select(scores, counts, scope="layer")


def shuffled_mask(mask: Mask, seed: int, *labels: object) -> Mask:
    """``mask`` with its entries permuted within each layer (same per-layer density)."""
    return mask.shuffled(generator(seed, *labels))
