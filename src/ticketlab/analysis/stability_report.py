"""The table and the plot of an instability analysis (``stability.json``'s record).

The library returns text and writes files; the command line decides what to print.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..tables import format_columns


def format_stability_table(summary: dict[str, Any]) -> str:
    """One row per rewind point: k, the two endpoint errors, the largest error on the path, the barrier."""
    header = ["rewind", "k (it)", "error A", "error B", "max on path", "barrier", "stable"]
    rows = [header]
    for entry in summary["rewind_points"]:
        a, b = entry["endpoint_errors"]
        rows.append([entry["rewind"], str(entry["iteration"]), f"{a:.2f}", f"{b:.2f}", f"{entry['max_error']:.2f}",
                     f"{entry['barrier']:.2f}", "yes" if entry["stable"] else "no"])
    lines = format_columns(rows)
    title = (f"{summary['model']} on {summary['data']}, seed {summary['seed']}, round {summary['round']} "
             f"({100 * summary['density']:.2f}% of weights left): test error (%) along the linear path between two "
             f"copies, {summary['points']} points; stable = barrier < {summary['stable_barrier']:g}")
    return "\n".join([title, *lines])


def stability_figure(summary: dict[str, Any]) -> Any:
    """Two panels: test error along the path (one line per rewind point, each its own colour, marker
    and dash) and the barrier against the rewind iteration k (symmetric-log x axis, since k = 0 is
    usually in the sweep, ticked at the iterations measured)."""
    from ..plotting import DENSE_STYLE, legend_outside, pyplot, style

    entries = summary["rewind_points"]
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(12, 4.4))
    for index, entry in enumerate(entries):
        left.plot(entry["alphas"], entry["errors"], label=f"k = {entry['rewind']}", **style(index))
    left.set_xlabel("interpolation α (0: copy A, 1: copy B)")
    left.set_ylabel("test error (%)")
    legend_outside(left)
    ks = [e["iteration"] for e in entries]
    right.plot(ks, [e["barrier"] for e in entries], label="error barrier", **style(0))
    right.axhline(summary["stable_barrier"], **DENSE_STYLE, label=f"stability threshold ({summary['stable_barrier']:g})")
    right.set_xscale("symlog", linthresh=max(1, min([k for k in ks if k > 0], default=1)))
    right.set_xticks(ks, [str(k) for k in ks], rotation=45, fontsize=8)
    right.minorticks_off()
    right.set_xlabel("rewind iteration k")
    right.set_ylabel("error barrier (points)")
    legend_outside(right)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    which = "the dense network (IMP round 0)" if summary["round"] == 0 else f"IMP round {summary['round']}"
    fig.suptitle(f"Instability of {which} ({100 * summary['density']:.2f}% of weights left): "
                 f"{summary['model']} on {summary['data']}, seed {summary['seed']}")
    return fig


def plot_stability(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `stability_figure` as a PNG at ``path``."""
    from ..plotting import save

    return save(stability_figure(summary), path)
