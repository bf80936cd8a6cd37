"""Overlap panels for the plots of `report` and `compare` (matplotlib axes given by the caller)."""

from __future__ import annotations

import itertools
from typing import Any

from .mask_files import RunOverlap
from .overlap import OverlapMatrix


# --- drawing (matplotlib axes given by the caller) -----------------------------------------------------
def draw_heatmap(ax: Any, matrix: OverlapMatrix, title: str, metric: str = "jaccard") -> None:
    """A labelled heat-map of one metric on ``ax``, values written in the cells (0..1 colour scale)."""
    values = matrix.values(metric)
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    ticks = range(len(matrix.labels))
    ax.set_xticks(list(ticks), labels=list(matrix.labels), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(list(ticks), labels=list(matrix.labels), fontsize=8)
    size = 8 if len(values) <= 8 else 6
    for i, j in itertools.product(ticks, ticks):
        ax.text(j, i, f"{values[i][j]:.2f}", ha="center", va="center", fontsize=size,
                color="black" if values[i][j] > 0.6 else "white")
    chance = matrix.mean_off_diagonal("chance_jaccard") if metric == "jaccard" else None
    ax.set_title(title + (f" (random masks: {chance:.2f})" if chance is not None else ""), fontsize=9)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def draw_round_overlap(ax: Any, overlap: RunOverlap) -> None:
    """Jaccard between consecutive rounds and between seeds vs % of weights remaining (log x ticked
    in percentages, dense on the left, like the accuracy panels above it); legend below the axes."""
    from ..plotting import legend_outside, percent_axis, style

    xs = [100 * d for d in overlap.densities]
    for index, (label, ys) in enumerate((("round r vs r-1 (mean over seeds)", overlap.consecutive),
                                         ("between seeds (mean over pairs)", overlap.between_seeds),
                                         ("random masks, same densities", overlap.chance))):
        points = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if points:
            ax.plot(*zip(*points), label=label, **style(index))
    percent_axis(ax, xs)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("mask Jaccard |A∩B| / |A∪B|")
    legend_outside(ax, where="below")
