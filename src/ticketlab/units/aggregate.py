"""Means and spreads over replicate seeds, the shape every ``summary.json`` entry shares."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .unit import read_result

#: Per-run fields averaged over seeds (those a record lacks are skipped).
AVERAGED = ("density", "test_accuracy", "val_accuracy", "early_stop_iteration",
            "early_stop_test_accuracy", "wall_time", "mask_updates", "mask_changed_fraction", "scoring_time",
            "iterations")


def aggregate(records: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean of each averaged field over seeds, ``<field>_std`` (population std), and the seeds.

    ``records`` maps seed -> that seed's ``result.json``. ``layer_densities`` are taken from the
    first seed (per-layer densities are the same for every seed of a method), and
    ``collapsed_layers`` is the union over seeds.
    """
    out: dict[str, Any] = {}
    first = next(iter(records.values()))
    for field in AVERAGED:
        if field not in first:
            continue
        values = [r[field] for r in records.values()]
        out[field] = statistics.fmean(values)
        out[f"{field}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
    out["layer_densities"] = first["layer_densities"]
    out["collapsed_layers"] = sorted({n for r in records.values() for n in r["collapsed_layers"]})
    out["seeds"] = {str(s): dict(r) for s, r in sorted(records.items())}
    return out


def aggregate_units(unit_dirs: Mapping[int, Path], controls: Sequence[str]) -> dict[str, Any] | None:
    """One summary entry from the unit directories of every seed (seed -> directory).

    Returns None until every seed's ``result.json`` exists; ``controls`` (read from
    ``<dir>/controls/<name>/result.json``) appear once every seed has finished them.
    """
    ticket, by_control = {}, {c: {} for c in controls}
    for seed, unit in unit_dirs.items():
        if (unit / "result.json").exists():
            ticket[seed] = read_result(unit / "result.json")
        for control in controls:
            path = unit / "controls" / control / "result.json"
            if path.exists():
                by_control[control][seed] = read_result(path)
    if len(ticket) < len(unit_dirs):
        return None
    entry = aggregate(ticket)
    entry["controls"] = {c: aggregate(r) for c, r in by_control.items() if len(r) == len(unit_dirs)}
    return entry
