"""``ticketlab stability``: instability analysis / linear mode connectivity of an IMP run's round.

Parses flags into a `StabilityConfig`, calls `ticketlab.analysis.stability`, prints the table.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import TicketlabError
from ..flags import split_list
from .options import INT
from .common import TerminalProgress, threads_option, trust_typed_code, user_code_options


def _sweep(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(split_list(text, "--rewind-sweep"))
    if not items:
        raise TicketlabError("--rewind-sweep needs at least one rewind point, e.g. 0,50it,1ep.")
    return items


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--round", "round_index", required=True, type=INT, help="The round to analyse (0: the dense network).")
@click.option("--seed", default=None, type=INT, help="Which replicate of the run (default: its first seed).")
@click.option("--points", default=11, show_default=True, type=INT,
              help="Evenly spaced points on the path between the two copies, both ends included (at least 3).")
@click.option("--rewind-sweep", default=None, metavar="STEPS",
              help="Comma list of rewind points k, e.g. 0,50it,100it,1ep (default: the run's own rewind point).")
@click.option("--bn-examples", default=10_000, show_default=True, type=INT,
              help="Training examples from which BatchNorm statistics are recomputed at each point.")
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Output directory (default: RUN_DIR/stability/seed-S-round-RR).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N, or auto.")
@threads_option
@click.option("--quiet", is_flag=True, help="No progress bars and no table.")
@user_code_options("--model", "--data")
def stability(run_dir: Path, round_index: int, seed: int | None, points: int, rewind_sweep: str | None,
              bn_examples: int, out: Path | None, device: str, threads: str, quiet: bool,
              user_model: str | None, user_data: str | None) -> None:
    """Train two copies of a round from its rewind point with different data orders and report the
    error barrier on the straight line between them (Frankle et al. 2020).

    Re-running the same command resumes; adding rewind points reuses those already measured.
    """
    from ..analysis.stability import StabilityAnalysis, StabilityConfig
    from ..analysis.stability_report import format_stability_table

    trust_typed_code(user_model, user_data)
    config = StabilityConfig(run=str(run_dir), round_index=round_index, seed=seed, points=points,
                             rewind_sweep=_sweep(rewind_sweep), bn_examples=bn_examples, device=device)
    analysis = StabilityAnalysis.prepare(config, out=out, threads=threads,
                                         typed_specs={"--model": user_model, "--data": user_data})
    if not quiet:
        click.echo(f"ticketlab stability: {run_dir}, seed {analysis.seed}, round {round_index}, rewind points "
                   f"{[p.label for p in analysis.points]}, device {analysis.device}, {analysis.threads} thread(s); "
                   f"writing to {analysis.out}",
                   err=True)
    started = time.perf_counter()
    summary = analysis.run(None if quiet else TerminalProgress())
    if not quiet:
        click.echo(format_stability_table(summary))
        click.echo(f"\nWrote {analysis.out / 'stability.json'} and {analysis.out / 'stability.png'} "
                   f"({time.perf_counter() - started:.0f} s).")
