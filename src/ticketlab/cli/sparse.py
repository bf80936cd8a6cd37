"""``prune-init``, ``sparse-train`` and ``compare``: the methods that compete with lottery tickets.

Their flags are generated from `PruneInitConfig`, `SparseTrainConfig` and `CompareConfig`
(`ticketlab.cli.options`); this module only builds the configs, runs and prints.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..experiments.compare import CompareConfig
from ..experiments.sparse import PruneInitConfig, SparseTrainConfig
from .common import default_out, progress_from, quiet_here, recipe_options, recipe_values, run_options, \
    worker_setting_from
from .options import config_from, config_options

_OUT_HELP = "Run directory (default: runs/{kind}-METHOD-MODEL-DATA-<config hash>)."


def _finish(summary: dict, out: Path, quiet: bool) -> None:
    from ..report import format_table, plot_report

    plot = plot_report(summary, out / "report.png")
    if not quiet:
        click.echo(format_table(summary))
        click.echo(f"\nWrote {out / 'summary.json'} and {plot}.")


def _run_sparse(cls: type, opts: dict) -> None:
    from ..experiments.sparse import SparseExperiment
    from ..train import resolve_device

    config = config_from(cls, opts, recipe_values(opts["recipe"], cls.KIND, cls))
    opts["quiet"] = quiet_here(opts["quiet"])
    out = Path(opts["out"]) if opts["out"] is not None else default_out(cls.KIND, config.to_json(), config.method,
                                                                        config.model, config.data)
    device = resolve_device(opts["device"])
    experiment = SparseExperiment.prepare(config, out, device=device, progress=progress_from(opts), stack=opts["stack"],
                                          workers=worker_setting_from(opts), threads=opts["threads"])
    if not opts["quiet"]:
        click.echo(f"ticketlab {cls.KIND}: {config.method} on {config.model}/{config.data}, densities "
                   f"{list(config.densities)}, seeds {list(config.seeds)}, device {device}, "
                   f"{experiment.threads} thread(s); writing to {out}", err=True)
    _finish(experiment.run(), experiment.out, opts["quiet"])


@click.command("prune-init")
@config_options(PruneInitConfig)
@click.option("--out", default=None, help=_OUT_HELP.format(kind="prune-init"))
@recipe_options
@run_options
def prune_init(**opts) -> None:
    """Prune at initialisation (SNIP, GraSP, SynFlow, magnitude, random), then train the mask from θ0.

    Re-running on the same --out resumes; more --density values or --seeds extend the run.
    """
    _run_sparse(PruneInitConfig, opts)


@click.command("sparse-train")
@config_options(SparseTrainConfig)
@click.option("--out", default=None, help=_OUT_HELP.format(kind="sparse-train"))
@recipe_options
@run_options
def sparse_train(**opts) -> None:
    """Dynamic sparse training (RigL, SET): the mask moves during training at constant density.

    Re-running on the same --out resumes; more --density values or --seeds extend the run.
    """
    _run_sparse(SparseTrainConfig, opts)


@click.command()
@config_options(CompareConfig)
@click.option("--out", default=None, help="Comparison directory (default: runs/compare-MODEL-DATA-<config hash>).")
@run_options
def compare(**opts) -> None:
    """Run (or resume) every method at every density with one training recipe; table + compare.png.

    More --methods, --density values or --seeds on the same --out run only the new cells.
    """
    from ..experiments.compare import CompareExperiment, format_compare
    from ..train import resolve_device

    config = config_from(CompareConfig, opts)
    opts["quiet"] = quiet_here(opts["quiet"])
    out = Path(opts["out"]) if opts["out"] is not None else default_out("compare", config.to_json(), config.model,
                                                                        config.data)
    device = resolve_device(opts["device"])
    experiment = CompareExperiment.prepare(config, out, device=device, progress=progress_from(opts),
                                           stack=opts["stack"], workers=worker_setting_from(opts),
                                           threads=opts["threads"])
    if not opts["quiet"]:
        click.echo(f"ticketlab compare: {', '.join(config.methods)} at {list(config.densities)}, "
                   f"seeds {list(config.seeds)}, device {device}, {experiment.threads} thread(s); writing to {out}",
                   err=True)
    result = experiment.run()
    if not opts["quiet"]:
        click.echo(format_compare(result["rows"], config))
        click.echo(f"\nWrote {out / 'compare.csv'}, {out / 'compare.md'} and {out / 'compare.png'}.")
