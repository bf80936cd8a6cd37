"""Means and spreads over replicate seeds, the shape every ``summary.json`` entry shares, and the
two files a summary is stored as: ``summary.json`` and its flat table ``summary.csv``.

The spread is the *sample* standard deviation (ddof = 1, `sample_std`): the seeds are a sample of
the initialisations a method could meet, and the population formula would understate the spread
by sqrt((n-1)/n) (0.82x for 3 seeds).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import write_json, write_text
from .unit import read_result

#: Per-run fields averaged over seeds (those a record lacks are skipped).
AVERAGED = ("density", "test_accuracy", "val_accuracy", "early_stop_iteration",
            "early_stop_test_accuracy", "wall_time", "mask_updates", "mask_changed_fraction", "scoring_time",
            "iterations")


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof = 1) of ``values``; 0.0 for a single value (no spread known)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(records: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean of each averaged field over seeds, ``<field>_std`` (sample std, ddof = 1), and the seeds.

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
        out[f"{field}_std"] = sample_std(values)
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


#: Fields of ``summary.csv`` (mean and sample std of each). Timings are left out: they differ
#: from run to run, and the table of a rerun must be the same bytes.
CSV_FIELDS = ("density", "test_accuracy", "val_accuracy", "early_stop_iteration", "early_stop_test_accuracy")


def _number(value: Any) -> str:
    """A cell: ``repr`` of a float (shortest round-tripping digits, so the bytes are deterministic)."""
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def summary_rows(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per (method, round / target density, control) of a ``summary.json``.

    ``control`` is ``none`` for the method itself (IMP's ticket); each field of `CSV_FIELDS` gives
    ``<field>_mean`` and ``<field>_std`` (sample std); ``seeds`` counts the seeds averaged.
    """
    method = summary.get("method") or summary.get("kind", "imp")
    rows = []
    for entry in summary.get("rounds", []):
        for control, source in [("none", entry), *sorted((entry.get("controls") or {}).items())]:
            row = {"method": str(method), "round": _number(entry.get("round")),
                   "target_density": _number(entry.get("target_density")), "control": control,
                   "seeds": str(len(source.get("seeds") or {}) or len(summary.get("seeds", [])))}
            for field in CSV_FIELDS:
                row[f"{field}_mean"] = _number(source.get(field))
                row[f"{field}_std"] = _number(source.get(f"{field}_std"))
            rows.append(row)
    return rows


def format_summary_csv(summary: Mapping[str, Any]) -> str:
    """``summary.csv``'s text: a header and `summary_rows` (``\\n`` line ends, same bytes every time)."""
    header = ["method", "round", "target_density", "control", "seeds",
              *(f"{f}_{s}" for f in CSV_FIELDS for s in ("mean", "std"))]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary_rows(summary))
    return buffer.getvalue()


def write_summary_files(out: Path, summary: Mapping[str, Any]) -> None:
    """Store ``summary`` as ``out/summary.json`` and ``out/summary.csv``, each written atomically."""
    write_json(Path(out) / "summary.json", summary)
    write_text(Path(out) / "summary.csv", format_summary_csv(summary))
