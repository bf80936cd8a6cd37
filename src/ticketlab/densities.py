"""Layer-wise density distributions: how a total budget of kept weights is spread over layers.

Used by random pruning, by the layer scope of every pruning-at-init scorer, and by the initial
masks of dynamic sparse training (RigL, SET):

* ``uniform``: every layer keeps the same fraction ``density``.
* ``er`` (Erdős–Rényi, Mocanu et al. 2018): ``density_l ∝ (n_in + n_out) / (n_in · n_out)``
  with ``n_out = shape[0]`` and ``n_in = shape[1]`` (input channels for a conv).
* ``erk`` (ER-Kernel, Evci et al. 2020): ``density_l ∝ Σ shape / ∏ shape``, which also counts
  the kernel dimensions of convolutions.

For ``er`` and ``erk`` one scale ε is solved so that Σ_l density_l · N_l equals the target; a
layer whose density would exceed 1 is made dense and ε is re-solved for the rest (as in the
RigL reference code). Counts are then rounded by largest remainder, so the total number of kept
weights is exactly ``round_half_up(density · N)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .errors import TicketlabError

DISTRIBUTIONS: tuple[str, ...] = ("uniform", "er", "erk")


def _raw_weight(shape: Sequence[int], distribution: str) -> float:
    """The unnormalised density of one layer (before the common scale ε)."""
    if distribution == "erk":
        return sum(shape) / math.prod(shape)
    if len(shape) < 2:  # a vector layer has no fan-in / fan-out split: treat it like ERK
        return sum(shape) / math.prod(shape)
    n_out, n_in = shape[0], shape[1]
    return (n_in + n_out) / (n_in * n_out)


def layer_densities(shapes: Mapping[str, Sequence[int]], density: float, distribution: str = "uniform") -> dict[str, float]:
    """Per-layer densities whose size-weighted mean is ``density``.

    Args:
        shapes: parameter name -> weight shape (e.g. ``(out, in)`` or ``(out, in, kh, kw)``).
        density: overall fraction of weights to keep, in (0, 1].
        distribution: ``uniform``, ``er`` or ``erk``.
    """
    if distribution not in DISTRIBUTIONS:
        raise TicketlabError(f"Unknown density distribution {distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}.")
    if not 0.0 < density <= 1.0:
        raise TicketlabError(f"A density must lie in (0, 1] (got {density}).")
    if not shapes:
        raise TicketlabError("No layers were given to distribute a density over.")
    if distribution == "uniform":
        return {name: density for name in shapes}
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: _raw_weight(shape, distribution) for name, shape in shapes.items()}
    target = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        sparse = [n for n in shapes if n not in dense]
        budget = target - sum(sizes[n] for n in dense)
        epsilon = budget / sum(raw[n] * sizes[n] for n in sparse)
        over = [n for n in sparse if epsilon * raw[n] > 1.0]
        if not over:
            break
        dense.add(max(over, key=lambda n: raw[n]))  # densest first, then re-solve ε
    return {name: 1.0 if name in dense else epsilon * raw[name] for name in shapes}


def layer_keep_counts(shapes: Mapping[str, Sequence[int]], density: float, distribution: str = "uniform") -> dict[str, int]:
    """Integer keep counts per layer that sum exactly to ``round_half_up(density · N)``.

    Every layer gets ``floor(density_l · N_l)``; the remaining weights go one each to the layers
    with the largest fractional parts (ties: the earlier layer), never above a layer's size.
    """
    densities = layer_densities(shapes, density, distribution)
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    ideal = {name: densities[name] * sizes[name] for name in shapes}
    counts = {name: min(sizes[name], math.floor(value)) for name, value in ideal.items()}
    total = math.floor(density * sum(sizes.values()) + 0.5)
    order = sorted(shapes, key=lambda n: -(ideal[n] - math.floor(ideal[n])))
    missing = total - sum(counts.values())
    for name in order * 2:
        if missing <= 0:
            break
        if counts[name] < sizes[name]:
            counts[name] += 1
            missing -= 1
    return counts
