"""The table and the plot of an instability analysis (``stability.json``'s record).

The library returns text and writes files; the command line decides what to print.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..files import save_figure


def format_stability_table(summary: dict[str, Any]) -> str:
    """One row per rewind point: k, the two endpoint errors, the largest error on the path, the barrier."""
    header = ["rewind", "k (it)", "error A", "error B", "max on path", "barrier", "stable"]
    rows = [header]
    for entry in summary["rewind_points"]:
        a, b = entry["endpoint_errors"]
        rows.append([entry["rewind"], str(entry["iteration"]), f"{a:.2f}", f"{b:.2f}", f"{entry['max_error']:.2f}",
                     f"{entry['barrier']:.2f}", "yes" if entry["stable"] else "no"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    title = (f"{summary['model']} on {summary['data']}, seed {summary['seed']}, round {summary['round']} "
             f"({100 * summary['density']:.2f}% of weights left): test error (%) along the linear path between two "
             f"copies, {summary['points']} points; stable = barrier < {summary['stable_barrier']:g}")
    return "\n".join([title, *lines])


def plot_stability(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a two-panel PNG: test error along the path (one line per rewind point) and the barrier
    against the rewind iteration k (symmetric-log x axis, since k = 0 is usually in the sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = summary["rewind_points"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for entry in entries:
        left.plot(entry["alphas"], entry["errors"], marker="o", markersize=3, label=f"k = {entry['rewind']}")
    left.set_xlabel("interpolation α (0: copy A, 1: copy B)")
    left.set_ylabel("test error (%)")
    left.legend()
    ks = [e["iteration"] for e in entries]
    right.plot(ks, [e["barrier"] for e in entries], marker="o")
    right.axhline(summary["stable_barrier"], color="gray", linestyle="--", linewidth=1, label="stability threshold")
    right.set_xscale("symlog", linthresh=max(1, min([k for k in ks if k > 0], default=1)))
    right.set_xticks(ks, [str(k) for k in ks], rotation=45, fontsize=8)
    right.minorticks_off()
    right.set_xlabel("rewind iteration k")
    right.set_ylabel("error barrier (points)")
    right.legend()
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Instability: {summary['model']} on {summary['data']}, round {summary['round']} "
                 f"({100 * summary['density']:.2f}% left), seed {summary['seed']}")
    return save_figure(fig, path)
