"""``ticketlab report``: the table and plot of finished (or running) run directories."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--png", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the plot (default: RUN_DIR/report.png).")
def report(run_dir: Path, png: Path | None) -> None:
    """Print the results table of a run directory and write its plot (report.png; for IMP with mask overlap)."""
    from ..report import format_table, load_summary, plot_report

    summary = load_summary(run_dir)
    click.echo(format_table(summary))
    path = plot_report(summary, png or run_dir / "report.png", run_dir=run_dir)
    click.echo(f"\nWrote {path}.")
