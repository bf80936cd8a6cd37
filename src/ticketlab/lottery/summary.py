"""``summary.json``: one entry per round, means and spreads over seeds, controls beside the ticket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..units import aggregate_units
from .config import IMPConfig


def summarize(out: Path, config: IMPConfig) -> dict[str, Any]:
    """Collect every finished ``result.json`` under ``out`` into the summary structure.

    A round appears once all seeds have finished its ticket; controls appear once all seeds have
    finished them. ``winning_ticket`` compares the mean final test accuracy with the dense
    round's, within ``config.tolerance`` percentage points.
    """
    rounds: list[dict[str, Any]] = []
    dense_accuracy = None
    for rnd in range(config.rounds + 1):
        entry = aggregate_units({s: out / f"seed-{s}" / f"round-{rnd:02d}" for s in config.seeds}, config.controls)
        if entry is None:
            break
        if rnd == 0:
            dense_accuracy = entry["test_accuracy"]
        entry = {"round": rnd, **entry,
                 "winning_ticket": bool(entry["test_accuracy"] >= dense_accuracy - config.tolerance)}
        rounds.append(entry)
    return {
        "kind": "imp",
        "model": config.model,
        "data": config.data,
        "seeds": list(config.seeds),
        "controls": list(config.controls),
        "tolerance": config.tolerance,
        "dense_test_accuracy": dense_accuracy,
        "complete": len(rounds) == config.rounds + 1
        and all(len(r["controls"]) == len(config.controls) for r in rounds[1:]),
        "rounds": rounds,
    }
