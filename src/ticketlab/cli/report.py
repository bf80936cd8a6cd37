"""``ticketlab report``: the table and plot of one run directory, or an overlay of several."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--png", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the plot (default: RUN_DIR/report.png for one run, "
                   "./report-overlay.png for several).")
def report(run_dirs: tuple[Path, ...], png: Path | None) -> None:
    """Print the results table of RUN_DIRS and write their plot.

    One IMP, prune-init or sparse-train run: its table and report.png (IMP: with mask overlap). One
    comparison, or several runs of any kinds: one table (a row per run, method and density) and one
    plot of test accuracy vs % of weights remaining with every run overlaid.
    """
    from ..overlay import format_overlay_table, load_run, plot_overlay, unique_labels
    from ..report import format_table, load_summary, plot_report

    if len(run_dirs) == 1 and (run_dirs[0] / "summary.json").exists():
        summary = load_summary(run_dirs[0])
        click.echo(format_table(summary))
        path = plot_report(summary, png or run_dirs[0] / "report.png", run_dir=run_dirs[0])
    else:
        runs = [load_run(d, label) for d, label in zip(run_dirs, unique_labels(list(run_dirs)))]
        click.echo(format_overlay_table(runs))
        default = run_dirs[0] / "report.png" if len(run_dirs) == 1 else Path("report-overlay.png")
        path = plot_overlay(runs, png or default)
    click.echo(f"\nWrote {path}.")
