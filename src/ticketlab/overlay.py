"""Several runs of any kind (IMP, prune-init, sparse-train, compare) in one table and one plot:
accuracy vs % of weights remaining (`ticketlab report A B C`).

`load_run` reads a run directory into `RunCurves`; `format_overlay_table` and `plot_overlay` show
them. Spreads are sample standard deviations over seeds, as in `ticketlab.report`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import schema
from .errors import TicketlabError
from .files import read_json
from .plotting import dense_line, legend_outside, line_with_spread, percent_axis, pyplot, save, spread_label, style
from .tables import format_columns
from .report import line_record, load_summary, plus_minus, summary_lines


# --- several runs: curves of accuracy vs % of weights remaining ---------------------------------
@dataclass(frozen=True)
class Curve:
    """One method (or control) of a run: mean test accuracy and its sample std at each % remaining."""

    name: str
    percents: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.percents) == len(self.mean) == len(self.std)) or not self.percents:
            raise TicketlabError(f"Curve {self.name!r} needs as many means and spreads as points (at least one).")


@dataclass(frozen=True)
class RunCurves:
    """What one run directory contributes to an overlay: its curves, dense accuracy, and names."""

    label: str
    kind: str
    model: str
    data: str
    seeds: int
    dense: float | None
    curves: tuple[Curve, ...]


def load_run(run_dir: str | os.PathLike, label: str | None = None) -> RunCurves:
    """The curves of a run directory of any kind (IMP, prune-init, sparse-train or compare).

    ``label`` names the run in tables and legends (default: the directory's name). Anything that is
    not a run directory, or a run with nothing finished yet, is one `TicketlabError` sentence.
    """
    root = Path(run_dir)
    label = label or root.resolve().name
    if not root.is_dir():
        raise TicketlabError(f"Run directory {str(run_dir)!r} does not exist.")
    if _present(root / "summary.json"):
        return _summary_curves(load_summary(root), label)
    if _present(root / "compare.json"):
        return _compare_curves(root, label)
    if not _present(root / "config.json"):
        raise TicketlabError(f"{str(run_dir)!r} is not a ticketlab run directory (it has no summary.json, "
                             "compare.json or config.json).")
    config = read_json(root / "config.json", root=root)
    if isinstance(config, dict) and config.get("kind") == "compare":
        raise TicketlabError(f"{str(run_dir)!r} is a comparison that has not finished yet (no compare.json).")
    return _summary_curves(load_summary(root), label)  # raises: no round has finished there


def _summary_curves(summary: dict[str, Any], label: str) -> RunCurves:
    kind = summary.get("kind", "imp")
    method = "imp" if kind == "imp" else str(summary.get("method"))   # an overlay names IMP's line "imp"
    curves = []
    for _, control in summary_lines(summary):
        points = [(e, line_record(e, control)) for e in summary["rounds"]]
        points = [(e, s) for e, s in points if s is not None]
        if points:
            curves.append(Curve(method if control is None else f"{method} {control}",
                                tuple(100 * e["density"] for e, _ in points),
                                tuple(s["test_accuracy"] for _, s in points),
                                tuple(s["test_accuracy_std"] for _, s in points)))
    if not curves:
        raise TicketlabError(f"Run {label!r} has no finished round to show.")
    return RunCurves(label, kind, str(summary.get("model")), str(summary.get("data")),
                     len(summary.get("seeds", [0])), summary.get("dense_test_accuracy"), tuple(curves))


def _present(path: Path) -> bool:
    """Whether a run's file is there at all: a link counts even when broken, so that the reader
    refuses it with a sentence rather than the directory looking like something else."""
    return path.exists() or path.is_symlink()


#: What an overlay reads from ``compare.json``: each row's method (a sub-directory's name), its
#: density and accuracy, and the run's model, data and seeds.
_COMPARE_ROW = schema.record(
    {"method": schema.text(max_length=200), "density": schema.real(0, 1), "test_accuracy": schema.real(0, 100)},
    {"test_accuracy_std": schema.real(0), "imp_round": schema.nullable(schema.integer()),
     "target_density": schema.nullable(schema.real(0, 1))})
COMPARE_SCHEMA = schema.record({
    "rows": schema.list_of(_COMPARE_ROW, label="row"),
    "config": schema.record(optional={"model": schema.nullable(schema.text()), "data": schema.nullable(schema.text()),
                                      "seeds": schema.list_of(schema.integer())}),
})


def _compare_curves(root: Path, label: str) -> RunCurves:
    """A comparison's curves from ``compare.json``'s rows, each spread re-read from its method's
    ``summary.json`` (so it is the sample std whatever formula wrote ``compare.json``)."""
    path = root / "compare.json"
    record = schema.validate(read_json(path, root=root, finite=True), COMPARE_SCHEMA, path,
                             "a ticketlab comparison table")
    rows, config = record["rows"], record["config"]
    for row in rows:
        if not _is_name(_method_dir(row["method"])):
            raise TicketlabError(f"{str(path)!r} is not a ticketlab comparison table (method "
                                 f"{row['method'][:40]!r} is not the name of one of its directories).")
    rounds = {d: _method_rounds(root / d) for d in dict.fromkeys(_method_dir(r["method"]) for r in rows)}
    by_method: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(
            (100 * row["density"], row["test_accuracy"], _compare_spread(rounds[_method_dir(row["method"])], row)))
    dense = by_method.pop("dense", None)
    curves = tuple(Curve(m, *(tuple(v) for v in zip(*sorted(points, reverse=True)))) for m, points in by_method.items())
    if not curves:
        raise TicketlabError(f"Comparison {label!r} has no method rows to show.")
    return RunCurves(label, "compare", str(config.get("model")), str(config.get("data")),
                     len(config.get("seeds", [0])), dense[0][1] if dense else None, curves)


def _is_name(name: str) -> bool:
    """A plain directory name: not empty, no separator, not ``.`` or ``..`` (a row's method names
    a sub-directory of the comparison; ``../x`` would read another directory)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _method_dir(method: str) -> str:
    """The sub-directory of a comparison that holds a row's method (dense rows: IMP's round 0)."""
    return "imp" if method in ("imp", "dense") else method


def _method_rounds(directory: Path) -> list[dict[str, Any]]:
    """The rounds of one method's ``summary.json`` in a comparison, read once for all its rows
    (none when the directory is missing or not a finished run)."""
    try:
        return load_summary(directory)["rounds"]
    except TicketlabError:
        return []


def _compare_spread(rounds: list[dict[str, Any]], row: dict[str, Any]) -> float:
    """The sample std of one comparison row, from its method's ``rounds`` (the row's own value
    when its entry is missing)."""
    if row["method"] == "dense":
        matches = rounds[:1]
    elif row["method"] == "imp":
        matches = [e for e in rounds if e.get("round") == row.get("imp_round")]
    else:
        matches = [e for e in rounds if e.get("target_density") == row.get("target_density")]
    return matches[0]["test_accuracy_std"] if matches else float(row.get("test_accuracy_std", 0.0))


def unique_labels(run_dirs: list[str | os.PathLike]) -> list[str]:
    """Each run's directory name, or its path as given where two runs share a name."""
    names = [Path(d).resolve().name for d in run_dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, run_dirs)]


def format_overlay_table(runs: list[RunCurves]) -> str:
    """One table for several runs: a row per (run, method, point), the run's label in the first column;
    a dense row where no curve holds the dense network already (an IMP run's round 0 does)."""
    header = ["run", "kind", "model", "data", "method", "% left", "test acc", "seeds"]
    rows = [header]
    for run in runs:
        first = [run.label, run.kind, run.model, run.data]
        if run.dense is not None and not any(x >= 100.0 for curve in run.curves for x in curve.percents):
            rows.append(first + ["dense", "100.00", f"{run.dense:6.2f}", str(run.seeds)])
        for curve in run.curves:
            for x, m, s in zip(curve.percents, curve.mean, curve.std):
                rows.append(first + [curve.name, f"{x:.2f}", plus_minus(m, s, run.seeds), str(run.seeds)])
    lines = format_columns(rows, right_from=5)
    title = (f"{len(runs)} run(s): test accuracy (%) at the end of training, "
             f"{spread_label([r.seeds for r in runs])}")
    return "\n".join([title, *lines])


def overlay_title(runs: list[RunCurves]) -> str:
    """Method(s), model(s) and data of an overlay, for its title."""
    methods = list(dict.fromkeys(c.name for r in runs for c in r.curves))
    models = " / ".join(dict.fromkeys(r.model for r in runs))
    data = " / ".join(dict.fromkeys(r.data for r in runs))
    return f"{', '.join(methods)}: {models} on {data} ({spread_label([r.seeds for r in runs])})"


def overlay_figure(runs: list[RunCurves]) -> Any:
    """Test accuracy vs % of weights remaining for every curve of every run, on one log axis
    (ticked in percentages, dense on the left); each run's dense accuracy as a dashed line.

    Curves are labelled ``run: method`` when more than one run is drawn; each gets its own colour,
    marker and line style, and a band of ± the sample std.
    """
    if not runs:
        raise TicketlabError("Nothing to overlay: give at least one run directory.")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.2))
    several, index = len(runs) > 1, 0
    for run in runs:
        if run.dense is not None:
            dense_line(ax, run.dense, label=f"{run.label}: dense" if several else "dense",
                       color=style(index)["color"] if several else None)
        for curve in run.curves:
            line_with_spread(ax, curve.percents, curve.mean, curve.std,
                             f"{run.label}: {curve.name}" if several else curve.name, index)
            index += 1
    percent_axis(ax, [x for r in runs for c in r.curves for x in c.percents] + [100.0])
    ax.set_ylabel("test accuracy (%)")
    legend_outside(ax)
    ax.set_title(overlay_title(runs), fontsize=10)
    return fig


def plot_overlay(runs: list[RunCurves], path: str | os.PathLike) -> Path:
    """Write `overlay_figure` as a PNG at ``path``."""
    return save(overlay_figure(runs), path)
