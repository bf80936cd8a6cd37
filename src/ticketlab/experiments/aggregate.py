"""Means and spreads over replicate seeds, the shape every ``summary.json`` entry shares."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

#: Per-run fields averaged over seeds (those a record lacks are skipped).
AVERAGED = ("density", "test_accuracy", "val_accuracy", "early_stop_iteration",
            "early_stop_test_accuracy", "wall_time", "mask_updates", "mask_changed_fraction", "scoring_time")


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
