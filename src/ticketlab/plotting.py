"""Shared pieces of every ticketlab figure: the percent-remaining axis, line styles, spread bands,
the dense baseline, legends that stay off the curves, and the "mean ± sample std" wording.

Each plot in ticketlab is built by a ``*_figure`` function that returns the matplotlib figure
(so tests can read its tick labels and titles) and saved by a thin ``plot_*`` wrapper through
`save`. Matplotlib is imported lazily (`pyplot`), with the non-interactive Agg backend, so that
importing ticketlab never needs a display.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Tick positions of the percent axis: the round numbers a reader looks for on a log scale.
PERCENT_TICKS: tuple[float, ...] = (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
#: Colour-blind-safe colours (Okabe–Ito), markers and dash patterns; `style` cycles each at its own
#: period so two curves differ in at least two of the three even when a figure holds many.
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")
DENSE_STYLE = {"color": "0.35", "linestyle": (0, (4, 2)), "linewidth": 1.2}


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def style(index: int) -> dict[str, Any]:
    """Line keyword arguments of the ``index``-th curve of a figure: colour, marker and line style."""
    return {"color": COLORS[index % len(COLORS)], "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINESTYLES[index % len(LINESTYLES)], "markersize": 4.5, "linewidth": 1.5}


def spread_label(seed_counts: int | Sequence[int]) -> str:
    """What the lines and bands show: "mean ± sample std (3 seeds)"; one seed has no spread."""
    counts = sorted({seed_counts} if isinstance(seed_counts, int) else set(seed_counts))
    if counts == [1]:
        return "1 seed, no spread"
    n = ", ".join(str(c) for c in counts)
    return f"mean ± sample std ({n} seeds)"


def percent_ticks(percents: Sequence[float]) -> list[float]:
    """The `PERCENT_TICKS` inside the range of ``percents`` (widened to the next tick on each side),
    so the axis always names the actual percentages remaining (100, 50, 20, ...), never 10^x."""
    low, high = min(percents), max(percents)
    above = [t for t in PERCENT_TICKS if t >= high]
    below = [t for t in PERCENT_TICKS if t <= low]
    top = min(above) if above else high
    bottom = max(below) if below else low
    return [t for t in PERCENT_TICKS if bottom <= t <= top]


def percent_axis(ax: Any, percents: Sequence[float], label: str = "% of weights remaining (log scale)") -> None:
    """A log x axis from dense (left) to sparse (right), ticked and labelled in plain percentages.

    ``percents`` are the x values drawn (percent of weights remaining, > 0).
    """
    ticks = percent_ticks(percents)
    log_axis(ax, ticks, [f"{t:g}" for t in ticks], label)


def log_axis(ax: Any, ticks: Sequence[float], labels: Sequence[str], xlabel: str, inverted: bool = True,
             span: tuple[float, float] | None = None) -> None:
    """A log x axis ticked only at ``ticks``, named ``labels`` (no minor ticks, no 10^x labels: a
    reader wants "20" or "5k"), with a major grid; it shows ``span`` (default: the ticks' range)
    with 15% to spare each side, the largest value on the left when ``inverted`` (dense to sparse)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    low, high = span if span is not None else (min(ticks), max(ticks))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(list(ticks)))
    ax.set_xticklabels(list(labels))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(*((high * 1.15, low / 1.15) if inverted else (low / 1.15, high * 1.15)))
    ax.set_xlabel(xlabel)
    ax.grid(True, which="major", alpha=0.3)


def line_with_spread(ax: Any, xs: Sequence[float], mean: Sequence[float], std: Sequence[float] | None,
                     label: str, index: int) -> None:
    """One mean curve in the ``index``-th style, with a band of ± ``std`` (sample std) when any is > 0."""
    kwargs = style(index)
    ax.plot(xs, mean, label=label, **kwargs)
    if std is not None and any(s > 0 for s in std):
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=kwargs["color"], alpha=0.15, linewidth=0)


def dense_line(ax: Any, accuracy: float, label: str = "dense", color: str | None = None) -> None:
    """The dense network's accuracy as a horizontal dashed line (the baseline a sparse curve is read
    against)."""
    ax.axhline(accuracy, **{**DENSE_STYLE, **({"color": color} if color else {})}, label=f"{label} ({accuracy:.2f})")


def legend_outside(ax: Any, fontsize: float = 8, handles: tuple[list, list] | None = None,
                   where: str = "right") -> None:
    """The legend outside the data area of ``ax`` (to its ``right`` or ``below`` its x label), so it
    never covers a curve; the figure's tight layout makes room for it.

    ``handles`` (a ``get_legend_handles_labels()`` pair) puts another axes' entries there, e.g. one
    legend beside the last of several panels that share their curves.
    """
    items, labels = handles or ax.get_legend_handles_labels()
    if not items:
        return
    if where == "below":
        ax.legend(items, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(3, len(items)),
                  fontsize=fontsize, frameon=False)
    else:
        ax.legend(items, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  fontsize=fontsize, frameon=False)


def tick_labels(ax: Any) -> list[str]:
    """The x tick labels of ``ax`` as text (what tests and readers see on the axis)."""
    return [t.get_text() for t in ax.get_xticklabels()]


def save(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically (`ticketlab.files.save_figure`) and close it."""
    from .files import save_figure

    return save_figure(fig, path)
