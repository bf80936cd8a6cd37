"""Tables and plots from a run directory's ``summary.json``.

The library returns text and writes files; the command line decides what to print. Every spread
shown is the sample standard deviation over seeds (ddof = 1): `load_summary` recomputes it from
the per-seed records a summary holds, so runs written before the switch from the population
formula read the same as new ones. Several runs overlaid: `ticketlab.overlay`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from . import schema
from .errors import TicketlabError
from .files import read_json
from .plotting import dense_line, legend_outside, line_with_spread, percent_axis, pyplot, save, spread_label
from .tables import format_columns
from .units.aggregate import sample_std


def load_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run directory's checked ``summary.json``, every ``<field>_std`` the sample std over seeds.

    Every reader of a summary (a run's report, overlays, ``--at-kept``, ``export``'s choice of
    round) comes through here: the file must be a regular file inside ``run_dir`` (no FIFO, no
    link elsewhere), hold no NaN or Infinity, and fit `SUMMARY_SCHEMA` (`summary_problem`), so the
    readers may use every field it describes without further checks.
    """
    path = Path(run_dir) / "summary.json"
    if not Path(run_dir).is_dir():
        raise TicketlabError(f"Run directory {str(run_dir)!r} does not exist.")
    if not path.exists() and not path.is_symlink():
        raise TicketlabError(f"{str(run_dir)!r} has no summary.json yet: no round has finished there.")
    summary = read_json(path, root=run_dir, finite=True)
    problem = summary_problem(summary)
    if problem is not None:
        raise TicketlabError(f"{str(path)!r} is not a ticketlab summary ({problem}).")
    for entry in summary["rounds"]:
        for source in [entry, *(entry.get("controls") or {}).values()]:
            _resample_spread(source)
    return summary


def _resample_spread(entry: dict[str, Any]) -> None:
    """Set each ``<field>_std`` of ``entry`` to the sample std of its per-seed records (``seeds``),
    where every record has that field (older summaries stored the population std)."""
    records = entry.get("seeds")
    if not isinstance(records, dict) or not records or not all(isinstance(r, dict) for r in records.values()):
        return
    for key in [k for k in entry if k.endswith("_std")]:
        values = [r.get(key[:-4]) for r in records.values()]
        if all(is_number(v) and math.isfinite(v) for v in values):
            entry[key] = sample_std(values)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- what a summary must hold: every field tables, plots, overlays and --at-kept read -------------
_FRACTION, _ACCURACY, _NON_NEGATIVE = schema.real(0, 1), schema.real(0, 100), schema.real(0)
#: One seed's record of a line (its unit's result.json): what ``--at-kept`` interpolates.
_SEED_RECORD = schema.record({"density": _FRACTION, "test_accuracy": _ACCURACY}, {"seed": schema.integer()})
#: What the record of every line holds, the run's own and each control's: means and sample stds.
_LINE_FIELDS = {"density": _FRACTION, "test_accuracy": _ACCURACY, "test_accuracy_std": _NON_NEGATIVE,
                "early_stop_iteration": _NON_NEGATIVE, "early_stop_iteration_std": _NON_NEGATIVE}
_LINE_OPTIONAL = {"collapsed_layers": schema.list_of(schema.text()),
                  "seeds": schema.dict_of(_SEED_RECORD, label="seed record")}
_CONTROL = schema.record(_LINE_FIELDS, _LINE_OPTIONAL)
#: Fields of a round entry that only IMP summaries have, and those only the other kinds have.
_KIND_FIELDS = {True: {"round": schema.integer(), "winning_ticket": schema.flag()},
                False: {"target_density": _FRACTION}}
#: Top-level fields read besides the rounds. ``cost`` is shown only where well formed (old summaries
#: lack it), so it is not checked.
_TOP_OPTIONAL = {
    "kind": schema.text(), "method": schema.nullable(schema.text()), "model": schema.nullable(schema.text()),
    "data": schema.nullable(schema.text()), "seeds": schema.list_of(schema.integer()),
    "controls": schema.list_of(schema.text()), "dense_test_accuracy": schema.nullable(_ACCURACY),
    "dense_reference": schema.record(optional={"source": schema.nullable(schema.text())}),
    "early_bird": schema.record(optional={"epsilon": schema.nullable(schema.real()), "seeds": schema.dict_of(
        schema.record(optional={"stop_iteration": schema.nullable(schema.integer())}), label="seed")}),
}


def summary_schema(is_imp: bool) -> schema.Check:
    """The schema of a summary of an IMP run (``is_imp``) or of a prune-init / sparse-train run."""
    entry = schema.record({**_LINE_FIELDS, **_KIND_FIELDS[is_imp]},
                          {**_LINE_OPTIONAL, "controls": schema.dict_of(_CONTROL, label="control")})
    return schema.record({"rounds": schema.list_of(entry, label="round entry")}, _TOP_OPTIONAL)


def summary_problem(summary: Any) -> str | None:
    """What is wrong with a ``summary.json`` (None if it has every field tables and plots read, of
    the types and in the ranges they need: `summary_schema`)."""
    if not isinstance(summary, dict):
        return "not an object"
    if not isinstance(summary.get("rounds"), list):
        return "no list of rounds"
    return schema.problem(summary, summary_schema(summary.get("kind", "imp") == "imp"))


def summary_lines(summary: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Every line a summary holds, the run's own first, as ``(label, control)``: control is None for
    the run's own line (labelled "ticket" for IMP, else its method, e.g. "snip") and the control's
    name otherwise. Tables and plots of one run, overlays and the kept-weights view all read a
    summary's lines through this, so they agree on which lines there are."""
    main = "ticket" if summary.get("kind", "imp") == "imp" else str(summary.get("method"))
    return [(main, None), *((str(c), str(c)) for c in summary.get("controls", []))]


def line_record(entry: dict[str, Any], control: str | None) -> dict[str, Any] | None:
    """A round entry's record of one line (see `summary_lines`): the entry itself for the run's own
    line, else that control's record (None where the control did not run that round, e.g. round 0)."""
    return entry if control is None else (entry.get("controls") or {}).get(control)


def plus_minus(mean: float, std: float, seeds: int) -> str:
    return f"{mean:6.2f} ± {std:4.2f}" if seeds > 1 else f"{mean:6.2f}"


def _cost_cell(entry: dict[str, Any]) -> str:
    """What the ticket of this round cost so far, in dense trainings ("-" for summaries without it)."""
    cost = entry.get("cost")
    value = cost.get("cumulative_dense_trainings") if isinstance(cost, dict) else None
    return f"{value:.2f}" if is_number(value) else "-"


def _cost_note(summary: dict[str, Any]) -> list[str]:
    """A line on what the cost column counts, and where early-bird masks were drawn (IMP only)."""
    cost, notes = summary.get("cost"), []
    if isinstance(cost, dict) and is_number(cost.get("dense_iterations")) and is_number(cost.get("control_iterations")):
        notes.append(f"cost: the ticket line's training up to that round, in dense trainings of "
                     f"{cost['dense_iterations']:.0f} iterations; controls and the dense reference cost "
                     f"{(cost['control_iterations'] + cost.get('reference_iterations', 0)) / cost['dense_iterations']:.2f} more")
    early = summary.get("early_bird")
    if isinstance(early, dict) and isinstance(early.get("seeds"), dict):
        stops = [str(r.get("stop_iteration")) for r in early["seeds"].values() if isinstance(r, dict)]
        notes.append(f"early-bird (eps {early.get('epsilon')}): round 1's mask taken at iteration(s) "
                     f"{', '.join(stops) or '-'} of round 0 (None: the masks never settled)")
    return notes


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table: one row per round with the ticket and each control (IMP: with its cost)."""
    n_seeds = len(summary.get("seeds", [0]))
    is_imp = summary.get("kind", "imp") == "imp"
    costed = is_imp and any("cost" in entry for entry in summary["rounds"])
    (name, _), *control_lines = summary_lines(summary)
    header = ["round" if is_imp else "target", "% left", f"{name} acc", "early stop", "winner" if is_imp else "collapsed"]
    header += ["cost (dense trainings)"] if costed else []
    header += [f"{label} acc" for label, _ in control_lines]
    rows = [header]
    for entry in summary["rounds"]:
        first = str(entry["round"]) if is_imp else f"{100 * entry['target_density']:g}%"
        last = ("yes" if entry["winning_ticket"] else "no") if is_imp else str(len(entry.get("collapsed_layers", [])))
        row = [first, f"{100 * entry['density']:.2f}", plus_minus(entry["test_accuracy"], entry["test_accuracy_std"], n_seeds),
               f"{entry['early_stop_iteration']:.0f}", last] + ([_cost_cell(entry)] if costed else [])
        for _, control in control_lines:
            ctl = line_record(entry, control)
            row.append(plus_minus(ctl["test_accuracy"], ctl["test_accuracy_std"], n_seeds) if ctl else "-")
        rows.append(row)
    lines = format_columns(rows)
    dense = summary.get("dense_test_accuracy")
    title = (f"{summary.get('model')} on {summary.get('data')}"
             + ("" if is_imp else f", {summary.get('kind')} {summary.get('method')}")
             + f": test accuracy (%) at the end of training, {spread_label(n_seeds)}"
             + (f"; dense = {dense:.2f}" if dense is not None else "")
             + (" (given by --dense-accuracy)" if (summary.get("dense_reference") or {}).get("source") == "--dense-accuracy"
                else ""))
    return "\n".join([title, *lines, *(_cost_note(summary) if is_imp else [])])


def _method_title(summary: dict[str, Any]) -> str:
    """What ran, for a figure title: "IMP" or e.g. "prune-init snip"."""
    kind = summary.get("kind", "imp")
    return "IMP" if kind == "imp" else f"{kind} {summary.get('method')}"


def report_figure(summary: dict[str, Any], run_dir: str | os.PathLike | None = None) -> Any:
    """The figure of one run: test accuracy and early-stopping iteration vs % of weights remaining.

    The x axis is logarithmic, ticked in percentages, from dense (left) to sparse (right), as in
    the LTH paper; lines are means over seeds, bands ± the sample std; the dense accuracy (when the
    summary has one) is a dashed line. Given the ``run_dir`` of an IMP run whose masks reach round
    1, a second row shows mask overlap (`ticketlab.analysis.overlap`): Jaccard between consecutive
    rounds and between seeds, and a heat-map at the sparsest round.
    """
    rounds = summary["rounds"]
    if not rounds:
        raise TicketlabError("The summary has no finished round to plot.")
    overlap = _run_overlap(summary, run_dir)
    plt = pyplot()
    fig, grid = plt.subplots(1 if overlap is None else 2, 2, figsize=(12.5, 4.4 if overlap is None else 9.4),
                             squeeze=False)
    axes = grid[0]
    for index, (label, control) in enumerate(summary_lines(summary)):
        points = [(100 * e["density"], line_record(e, control)) for e in rounds]
        points = [(x, source) for x, source in points if source is not None]
        for ax, field in zip(axes, ("test_accuracy", "early_stop_iteration")) if points else ():
            line_with_spread(ax, [x for x, _ in points], [s[field] for _, s in points],
                             [s[f"{field}_std"] for _, s in points], label, index)
    if summary.get("dense_test_accuracy") is not None:
        dense_line(axes[0], summary["dense_test_accuracy"])
    for ax, ylabel in zip(axes, ("test accuracy (%)", "early-stop iteration (min val loss)")):
        percent_axis(ax, [100 * e["density"] for e in rounds])
        ax.set_ylabel(ylabel)
    legend_outside(axes[1], handles=axes[0].get_legend_handles_labels())
    fig.suptitle(f"{_method_title(summary)}: {summary.get('model')} on {summary.get('data')} "
                 f"({spread_label(len(summary.get('seeds', [0])))})")
    if overlap is not None:
        from .analysis.overlap_plots import draw_heatmap, draw_round_overlap

        draw_round_overlap(grid[1][0], overlap)
        draw_heatmap(grid[1][1], overlap.matrix, overlap.matrix_title)
    return fig


def plot_report(summary: dict[str, Any], path: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> Path:
    """Write `report_figure` as a PNG at ``path``."""
    return save(report_figure(summary, run_dir), path)


def _run_overlap(summary: dict[str, Any], run_dir: str | os.PathLike | None) -> Any:
    """The mask overlap of an IMP run directory, or None (no directory, another kind, too few masks)."""
    if run_dir is None or summary.get("kind", "imp") != "imp":
        return None
    from .analysis.mask_files import imp_run_overlap

    return imp_run_overlap(run_dir)
