"""Runs compared at the same absolute number of kept weights (``ticketlab report A B --at-kept 5000``).

"% of weights remaining" puts a wide and a narrow network on one axis only when their sizes are
alike. The lottery ticket hypothesis's question about overparameterisation — does a wider network
hold a better ticket? — is about the same *budget* of weights, so these tables and plots use the
absolute count of kept (prunable, unmasked) weights instead.

IMP at a fixed rate gives every width its own counts, so each seed's test accuracy is interpolated
linearly in log(kept weights) between the two finished rounds around a count; outside a curve's
range (denser than its dense network, sparser than its last round, or above round 1 for a control)
there is no value ("–"). Means and spreads are over seeds (sample std, n − 1, as everywhere in
ticketlab); a control's gap to the ticket is paired by seed (the control uses the seed's mask).
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import schema
from .errors import TicketlabError
from .files import safetensors_shapes
from .plotting import legend_outside, log_axis, pyplot, save, spread_label, style
from .tables import format_columns
from .report import line_record, load_summary, plus_minus, summary_lines
from .units.aggregate import sample_std


@dataclass(frozen=True)
class SeedCurve:
    """One line of a run (its ticket, or a control): per seed, (kept weights, test accuracy) at
    every finished round, densest first."""

    name: str
    points: dict[int, tuple[tuple[float, float], ...]]


@dataclass(frozen=True)
class KeptRun:
    """A run directory's lines on the kept-weights axis: ``prunable`` weights in all, the ticket's
    line first (its round 0 is the dense network), then each control's."""

    label: str
    prunable: int
    curves: tuple[SeedCurve, ...]
    dense: float | None = None   # the summary's dense accuracy (a run without a round 0)

    @property
    def seeds(self) -> int:
        return len(self.curves[0].points)


def prunable_count(run_dir: Path) -> int:
    """The number of prunable weights of a run's network, from the shapes in one of its mask files
    (read from the file header only; a regular file inside the run directory: `safetensors_shapes`)."""
    for path in sorted(run_dir.glob("seed-*/*/mask.safetensors")):
        shapes = safetensors_shapes(path, "mask file", root=run_dir)
        return sum(math.prod(shape) for shape in shapes.values())
    raise TicketlabError(f"Run {str(run_dir)!r} has no mask file (seed-S/…/mask.safetensors) to count its "
                         "prunable weights; finish a pruned round first.")


#: Beyond what `load_summary` checks, the kept-weights view pairs seeds by the ``seed`` of each
#: per-seed record (old summaries may lack it; their tables still read).
_SEEDED = schema.dict_of(schema.record({"seed": schema.integer()}), label="seed record")
_KEPT_SCHEMA = schema.record({"rounds": schema.list_of(schema.record(optional={
    "seeds": _SEEDED, "controls": schema.dict_of(schema.record(optional={"seeds": _SEEDED}), label="control")}),
    label="round entry")})


def load_kept_run(run_dir: str | os.PathLike, label: str | None = None) -> KeptRun:
    """The lines of an IMP, prune-init or sparse-train run directory, on the kept-weights axis."""
    root = Path(run_dir)
    label = label or root.resolve().name
    summary = load_summary(root)
    schema.validate(summary, _KEPT_SCHEMA, root / "summary.json", "a summary --at-kept can read")
    prunable = prunable_count(root)
    curves = [SeedCurve(name, _seed_points(summary["rounds"], control, prunable))
              for name, control in summary_lines(summary)]
    if not curves[0].points:   # the seeds, dense cell and gaps are all read from the run's own line
        raise TicketlabError(f"Run {label!r} has no finished round to show.")
    return KeptRun(label, prunable, tuple(c for c in curves if c.points), summary.get("dense_test_accuracy"))


def _seed_points(rounds: list[dict[str, Any]], control: str | None,
                 prunable: int) -> dict[int, tuple[tuple[float, float], ...]]:
    by_seed: dict[int, list[tuple[float, float]]] = {}
    for entry in rounds:
        for record in ((line_record(entry, control) or {}).get("seeds") or {}).values():
            by_seed.setdefault(int(record["seed"]), []).append(
                (record["density"] * prunable, float(record["test_accuracy"])))
    return {seed: tuple(sorted(points, reverse=True)) for seed, points in sorted(by_seed.items())}


def interpolate(points: tuple[tuple[float, float], ...], count: float) -> float | None:
    """Accuracy at ``count`` kept weights, linear in log(count) between the points around it
    (``points``: (kept, accuracy), densest first); None outside their range."""
    for (k1, a1), (k2, a2) in zip(points, points[1:]):
        if k2 <= count <= k1:
            if k1 == k2:
                return a1
            return a1 + (a2 - a1) * (math.log(count) - math.log(k1)) / (math.log(k2) - math.log(k1))
    if points and points[0][0] == count:
        return points[0][1]
    return None


def _per_seed(curve: SeedCurve, count: float) -> dict[int, float]:
    values = {seed: interpolate(points, count) for seed, points in curve.points.items()}
    return {seed: value for seed, value in values.items() if value is not None}


def _cell(values: list[float], signed: bool = False) -> str:
    """Mean ± sample std of ``values`` ("–" for none); ``signed``: with a + before gains."""
    if not values:
        return "–"
    text = plus_minus(statistics.fmean(values), sample_std(values), len(values)).strip()
    return f"+{text}" if signed and not text.startswith("-") else text


def format_at_kept(runs: list[KeptRun], counts: list[float]) -> str:
    """Two tables: every line's accuracy at each of ``counts`` kept weights, and each control's
    gap to its run's ticket (paired by seed)."""
    columns = [(run, curve) for run in runs for curve in run.curves]
    header = ["kept weights", *(f"{run.label} {curve.name}" for run, curve in columns)]
    rows = [[f"{count:,.0f}", *(_cell(list(_per_seed(curve, count).values())) for run, curve in columns)]
            for count in counts]
    rows.append(["dense (all)", *(_dense_cell(run) if i == 0 else "" for run in runs for i, _ in enumerate(run.curves))])
    lines = [f"test accuracy (%) at the same number of kept weights, {spread_label([r.seeds for r in runs])}; "
             "interpolated in log(kept weights) between rounds", *format_columns([header, *rows])]
    gaps = [(run, curve) for run in runs for curve in run.curves[1:]]
    if gaps:
        header = ["kept weights", *(f"{run.label} {run.curves[0].name} − {curve.name}" for run, curve in gaps)]
        rows = [[f"{count:,.0f}", *(_cell(_paired(run.curves[0], curve, count), signed=True) for run, curve in gaps)]
                for count in counts]
        lines += ["", "gap of the ticket over each control (points; paired by seed)",
                  *format_columns([header, *rows])]
    return "\n".join(lines)


def _dense_cell(run: KeptRun) -> str:
    """The dense network's accuracy (per seed from an IMP run's round 0, else the summary's mean)
    and its weight count."""
    dense = [points[0][1] for points in run.curves[0].points.values() if points[0][0] == run.prunable]
    if not dense and run.dense is not None:
        return f"{run.dense:.2f} ({run.prunable:,})"
    return f"{_cell(dense)} ({run.prunable:,})"


def _paired(main: SeedCurve, control: SeedCurve, count: float) -> list[float]:
    ours, theirs = _per_seed(main, count), _per_seed(control, count)
    return [ours[seed] - theirs[seed] for seed in sorted(ours.keys() & theirs.keys())]


def kept_figure(runs: list[KeptRun]) -> Any:
    """Test accuracy vs kept weights (log axis, dense on the left): each run in its own colour, the
    ticket solid and its controls dashed, with ± sample-std bands."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.2))
    counts: list[float] = []
    for index, run in enumerate(runs):
        colour = style(index)["color"]
        for position, curve in enumerate(run.curves):
            xs, mean, std = _mean_line(curve)
            counts += xs
            ax.plot(xs, mean, color=colour, linestyle="-" if position == 0 else "--",
                    marker=style(index)["marker"], markersize=3, label=f"{run.label}: {curve.name}")
            if len(curve.points) > 1:
                ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=colour, alpha=0.12, linewidth=0)
    _count_axis(ax, counts)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"tickets at the same number of kept weights; {spread_label([r.seeds for r in runs])}", fontsize=10)
    legend_outside(ax)
    return fig


def _count_axis(ax: Any, counts: list[float]) -> None:
    """A log x axis of kept weights, dense (many) on the left, ticked 1-2-5 in plain numbers (5k, 20k)."""
    low, high = min(counts), max(counts)
    ticks = [m * 10 ** e for e in range(0, 13) for m in (1, 2, 5) if low / 1.5 <= m * 10 ** e <= high * 1.5]
    labels = [f"{t / 1e6:g}M" if t >= 1e6 else f"{t / 1e3:g}k" if t >= 1e3 else f"{t:g}" for t in ticks]
    log_axis(ax, ticks, labels, "kept weights (log scale)", span=(low, high))


def _mean_line(curve: SeedCurve) -> tuple[list[float], list[float], list[float]]:
    """The curve's rounds: mean kept count, mean accuracy and its sample std over seeds."""
    rounds = list(zip(*curve.points.values()))   # rounds every seed has finished
    xs = [statistics.fmean(k for k, _ in points) for points in rounds]
    accuracies = [[a for _, a in points] for points in rounds]
    return xs, [statistics.fmean(a) for a in accuracies], [sample_std(a) for a in accuracies]


def plot_kept(runs: list[KeptRun], path: str | os.PathLike) -> Path:
    """Write `kept_figure` as a PNG at ``path``."""
    return save(kept_figure(runs), path)


__all__ = ["KeptRun", "SeedCurve", "format_at_kept", "interpolate", "kept_figure", "load_kept_run", "plot_kept",
           "prunable_count"]
