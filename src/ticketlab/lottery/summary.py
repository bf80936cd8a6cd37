"""``summary.json``: one entry per round, means and spreads over seeds, controls beside the ticket."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..runs import read_json
from .config import IMPConfig

#: Per-run fields averaged over seeds in the summary.
AVERAGED = ("density", "test_accuracy", "val_accuracy", "early_stop_iteration",
            "early_stop_test_accuracy", "wall_time")


def _aggregate(records: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean of each averaged field over seeds, ``<field>_std`` (population std), and the seeds."""
    out: dict[str, Any] = {}
    for field in AVERAGED:
        values = [r[field] for r in records.values()]
        out[field] = statistics.fmean(values)
        out[f"{field}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
    first = next(iter(records.values()))
    out["layer_densities"] = first["layer_densities"]
    out["collapsed_layers"] = sorted({n for r in records.values() for n in r["collapsed_layers"]})
    out["seeds"] = {str(s): r for s, r in sorted(records.items())}
    return out


def summarize(out: Path, config: IMPConfig) -> dict[str, Any]:
    """Collect every finished ``result.json`` under ``out`` into the summary structure.

    A round appears once all seeds have finished its ticket; controls appear once all seeds have
    finished them. ``winning_ticket`` compares the mean final test accuracy with the dense
    round's, within ``config.tolerance`` percentage points.
    """
    rounds: list[dict[str, Any]] = []
    dense_accuracy = None
    for rnd in range(config.rounds + 1):
        ticket, controls = {}, {c: {} for c in config.controls}
        for seed in config.seeds:
            round_dir = out / f"seed-{seed}" / f"round-{rnd:02d}"
            if (round_dir / "result.json").exists():
                ticket[seed] = read_json(round_dir / "result.json")
            for control in config.controls:
                path = round_dir / "controls" / control / "result.json"
                if path.exists():
                    controls[control][seed] = read_json(path)
        if len(ticket) < len(config.seeds):
            break
        entry = {"round": rnd, **_aggregate(ticket)}
        if rnd == 0:
            dense_accuracy = entry["test_accuracy"]
        entry["winning_ticket"] = bool(entry["test_accuracy"] >= dense_accuracy - config.tolerance)
        entry["controls"] = {c: _aggregate(r) for c, r in controls.items() if len(r) == len(config.seeds)}
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
