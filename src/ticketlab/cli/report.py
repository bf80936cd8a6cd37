"""``ticketlab report``: the table and plot of one run directory, or an overlay of several."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--png", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the plot (default: RUN_DIR/report.png for one run, "
                   "./report-overlay.png for several, ./report-kept.png with --at-kept). It may replace only "
                   "a PNG file, and inside a run or export directory only that directory's report*.png.")
@click.option("--at-kept", default=None, metavar="COUNTS",
              help="Compare IMP, prune-init or sparse-train runs at these numbers of kept weights (comma list, "
                   "e.g. 20000,5000): accuracy interpolated in log(kept weights) between rounds, the ticket's gap "
                   "over each control paired by seed, and a plot against kept weights (for networks of "
                   "different sizes, e.g. --width).")
def report(run_dirs: tuple[Path, ...], png: Path | None, at_kept: str | None) -> None:
    """Print the results table of RUN_DIRS and write their plot.

    One IMP, prune-init or sparse-train run: its table and report.png (IMP: with mask overlap). One
    comparison, or several runs of any kinds: one table (a row per run, method and density) and one
    plot of test accuracy vs % of weights remaining with every run overlaid.
    """
    from ..outputs import check_png_target
    from ..overlay import format_overlay_table, load_run, plot_overlay, unique_labels
    from ..report import format_table, load_summary, plot_report

    target = check_png_target(png or _default_png(run_dirs, at_kept is not None))
    if at_kept is not None:
        from ..kept import format_at_kept, load_kept_run, plot_kept

        counts = _counts(at_kept)
        runs = [load_kept_run(d, label) for d, label in zip(run_dirs, unique_labels(list(run_dirs)))]
        click.echo(format_at_kept(runs, counts))
        click.echo(f"\nWrote {plot_kept(runs, target)}.")
        return
    if len(run_dirs) == 1 and (run_dirs[0] / "summary.json").exists():
        summary = load_summary(run_dirs[0])
        click.echo(format_table(summary))
        path = plot_report(summary, target, run_dir=run_dirs[0])
    else:
        runs = [load_run(d, label) for d, label in zip(run_dirs, unique_labels(list(run_dirs)))]
        click.echo(format_overlay_table(runs))
        path = plot_overlay(runs, target)
    click.echo(f"\nWrote {path}.")


def _default_png(run_dirs: tuple[Path, ...], at_kept: bool) -> Path:
    """Where the plot goes without --png: ./report-kept.png with --at-kept, RUN_DIR/report.png for
    one run, ./report-overlay.png for several."""
    if at_kept:
        return Path("report-kept.png")
    return run_dirs[0] / "report.png" if len(run_dirs) == 1 else Path("report-overlay.png")


def _counts(text: str) -> list[float]:
    """``--at-kept 20000,5000`` -> [20000.0, 5000.0]; anything else (no number, text, a count below
    1, nan, inf) is one sentence naming the flag."""
    from ..flags import floats_parser
    from ..validate import real

    return [real(c, "A count in --at-kept", low=1) for c in floats_parser("--at-kept")(text)]
