"""Mask overlap: how much two masks agree, per layer and over all layers.

For two masks A and B of the same layout (the same parameter names and shapes), each layer gives:

* **Jaccard** ``|A ∩ B| / |A ∪ B|`` over the kept weights: 1 for identical masks, 0 for disjoint
  ones. Convention: when the union is empty (neither mask keeps a weight of the layer) the Jaccard
  index is 1 — the two masks agree everywhere there, so "J = 1 exactly when A = B" holds.
* **Hamming distance**: the number of positions where the masks differ (``|A ∪ B| − |A ∩ B|``),
  and that number over the layer's positions (the normalised distance of early-bird tickets).
* **chance Jaccard**: what two independent, uniformly random masks with the same kept counts per
  layer would give: ``E|A ∩ B| = k_A·k_B / n`` per layer, Jaccard as the ratio of the expected
  intersection and union (exact as layers grow). A Jaccard near chance means "no shared structure".

"Overall" pools every layer's positions (sums of counts, not a mean of per-layer ratios), so a big
layer weighs as much as its weights. IMP masks only shrink, so the Jaccard between rounds r−1 and r
is exactly density_r / density_{r−1}: the interesting question there is whether *different seeds*
find the same ticket.

`ticketlab.analysis.mask_files` finds masks on disk and summarises an IMP run's masks round by
round; `ticketlab.analysis.overlap_plots` draws the panels of `report` and `compare`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import TicketlabError
from ..masks import Mask
from ..tables import format_columns

#: Metrics a matrix of overlaps can show (attributes of `Overlap`).
METRICS: tuple[str, ...] = ("jaccard", "hamming_fraction", "chance_jaccard")


# --- the numbers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Overlap:
    """Counts of one layer, or of all layers pooled: ``positions`` weights, of which ``kept_a`` are
    kept by A, ``kept_b`` by B, ``both`` by both; ``expected_both`` is ``both`` for random masks."""

    positions: int
    kept_a: int
    kept_b: int
    both: int
    expected_both: float

    @property
    def either(self) -> int:
        """|A ∪ B|: weights kept by at least one mask."""
        return self.kept_a + self.kept_b - self.both

    @property
    def jaccard(self) -> float:
        """|A ∩ B| / |A ∪ B|; 1.0 when the union is empty (the masks agree everywhere)."""
        return self.both / self.either if self.either else 1.0

    @property
    def hamming(self) -> int:
        """Positions where the masks differ."""
        return self.either - self.both

    @property
    def hamming_fraction(self) -> float:
        """`hamming` over the number of positions (0.0 for a layer without positions)."""
        return self.hamming / self.positions if self.positions else 0.0

    @property
    def chance_jaccard(self) -> float:
        """Jaccard of random masks with these kept counts (ratio of expectations; 1.0 if both empty)."""
        union = self.kept_a + self.kept_b - self.expected_both
        return self.expected_both / union if union > 0 else 1.0

    @property
    def density_a(self) -> float:
        return self.kept_a / self.positions if self.positions else 1.0

    @property
    def density_b(self) -> float:
        return self.kept_b / self.positions if self.positions else 1.0

    def __add__(self, other: "Overlap") -> "Overlap":
        return Overlap(self.positions + other.positions, self.kept_a + other.kept_a, self.kept_b + other.kept_b,
                       self.both + other.both, self.expected_both + other.expected_both)

    def swapped(self) -> "Overlap":
        """The same counts seen from B (A and B exchanged)."""
        return Overlap(self.positions, self.kept_b, self.kept_a, self.both, self.expected_both)

    def to_json(self) -> dict[str, Any]:
        return {"positions": self.positions, "kept_a": self.kept_a, "kept_b": self.kept_b, "both": self.both,
                "either": self.either, "density_a": self.density_a, "density_b": self.density_b,
                "jaccard": self.jaccard, "chance_jaccard": self.chance_jaccard, "hamming": self.hamming,
                "hamming_fraction": self.hamming_fraction}


def layer_overlap(a: torch.Tensor, b: torch.Tensor) -> Overlap:
    """`Overlap` of two bool tensors of one shape (any shape; compared position by position)."""
    positions, kept_a, kept_b = a.numel(), int(a.sum()), int(b.sum())
    expected = kept_a * kept_b / positions if positions else 0.0
    return Overlap(positions, kept_a, kept_b, int((a & b).sum()), expected)


@dataclass(frozen=True)
class MaskOverlap:
    """Per-layer `Overlap` of two masks (in A's layer order) and the pooled ``overall``."""

    layers: dict[str, Overlap]

    @property
    def overall(self) -> Overlap:
        return sum(self.layers.values(), Overlap(0, 0, 0, 0, 0.0))

    def to_json(self) -> dict[str, Any]:
        return {"layers": {n: o.to_json() for n, o in self.layers.items()}, "overall": self.overall.to_json()}


def layout_difference(a: Mask, b: Mask, names: tuple[str, str] = ("A", "B")) -> str | None:
    """The first difference in layout between ``a`` and ``b`` as a phrase, or None if they match.

    Layer order does not matter; names and shapes do (positions must mean the same weight).
    """
    for first, second, (one, other) in ((a, b, names), (b, a, names[::-1])):
        missing = [n for n in first if n not in second]
        if missing:
            return f"mask {one} has layer {missing[0]!r}, which mask {other} lacks"
    for name in a:
        if a[name].shape != b[name].shape:
            return (f"layer {name!r} has shape {tuple(a[name].shape)} in mask {names[0]} "
                    f"but {tuple(b[name].shape)} in mask {names[1]}")
    return None


def compare_masks(a: Mask, b: Mask, names: tuple[str, str] = ("A", "B")) -> MaskOverlap:
    """Per-layer and overall overlap of ``a`` and ``b``; a TicketlabError if their layouts differ.

    ``names`` label the masks in that error (the command line passes the paths).
    """
    difference = layout_difference(a, b, names)
    if difference is not None:
        raise TicketlabError(f"The masks cannot be compared: {difference}.")
    return MaskOverlap({n: layer_overlap(a[n], b[n]) for n in a})


@dataclass(frozen=True)
class OverlapMatrix:
    """Pairwise `Overlap` of labelled masks: ``cells[i][j]`` compares mask i (as A) with mask j."""

    labels: tuple[str, ...]
    cells: tuple[tuple[Overlap, ...], ...]

    def values(self, metric: str = "jaccard") -> list[list[float]]:
        """The ``len(labels) × len(labels)`` matrix of one metric (see `METRICS`)."""
        if metric not in METRICS:
            raise TicketlabError(f"Unknown overlap metric {metric!r}; choose one of {', '.join(METRICS)}.")
        return [[getattr(cell, metric) for cell in row] for row in self.cells]

    def mean_off_diagonal(self, metric: str = "jaccard") -> float | None:
        """Mean of the metric over pairs of different masks (None with fewer than two masks)."""
        values = self.values(metric)
        pairs = [values[i][j] for i, j in itertools.combinations(range(len(values)), 2)]
        return sum(pairs) / len(pairs) if pairs else None


def overlap_matrix(masks: Mapping[str, Mask]) -> OverlapMatrix:
    """Every pair of ``masks`` (label -> mask) compared once; the matrix is filled symmetrically."""
    labels = tuple(masks)
    grid: list[list[Overlap | None]] = [[None] * len(labels) for _ in labels]
    for i, j in itertools.combinations_with_replacement(range(len(labels)), 2):
        overall = compare_masks(masks[labels[i]], masks[labels[j]], (repr(labels[i]), repr(labels[j]))).overall
        grid[i][j], grid[j][i] = overall, overall.swapped()
    return OverlapMatrix(labels, tuple(tuple(row) for row in grid))  # type: ignore[arg-type]


def format_overlap(overlap: MaskOverlap, names: tuple[str, str] = ("A", "B")) -> str:
    """A plain-text table: one row per layer and one for all layers pooled."""
    header = ["layer", "positions", f"{names[0]} % kept", f"{names[1]} % kept", "kept by both", "Jaccard",
              "chance", "Hamming", "Hamming %"]
    rows = [header] + [_overlap_row(n, o) for n, o in [*overlap.layers.items(), ("overall", overlap.overall)]]
    lines = format_columns(rows, right_from=1)
    lines.insert(len(lines) - 1, lines[1])   # the rule again above the pooled row
    return "\n".join(lines)


def _overlap_row(name: str, o: Overlap) -> list[str]:
    return [name, str(o.positions), f"{100 * o.density_a:.2f}", f"{100 * o.density_b:.2f}", str(o.both),
            f"{o.jaccard:.4f}", f"{o.chance_jaccard:.4f}", str(o.hamming), f"{100 * o.hamming_fraction:.2f}"]
