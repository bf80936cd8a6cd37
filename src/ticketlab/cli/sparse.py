"""``prune-init``, ``sparse-train`` and ``compare``: the methods that compete with lottery tickets."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (TqdmProgress, data_options, default_out, parse_controls, parse_floats, parse_seeds, quiet_here,
                     split_list, train_config_from, train_options, worker_setting_from)


def _finish(summary: dict, out: Path, quiet: bool) -> None:
    from ..report import format_table, plot_report

    plot = plot_report(summary, out / "report.png")
    if not quiet:
        click.echo(format_table(summary))
        click.echo(f"\nWrote {out / 'summary.json'} and {plot}.")


def _run_sparse(kind: str, opts: dict) -> None:
    from ..experiments.sparse import SparseConfig, SparseExperiment
    from ..train import resolve_device

    opts["quiet"] = quiet_here(opts["quiet"])
    extra = {}
    if kind == "prune-init":
        extra = dict(allow_collapse=opts["allow_collapse"], score_batches=opts["score_batches"],
                     score_batch_size=opts["score_batch_size"], synflow_iterations=opts["synflow_iterations"],
                     synflow_double=opts["synflow_double"])
    else:
        extra = dict(update_every=opts["update_every"], alpha=opts["alpha"], end_fraction=opts["end_fraction"])
    config = SparseConfig(
        kind=kind, method=opts["method"], densities=parse_floats(opts["density"], "--density"),
        model=opts["model"], width=opts["width"], data=opts["data"], data_dir=opts["data_dir"], scope=opts["scope"],
        distribution=opts["distribution"], ignore=tuple(opts["ignore"]), controls=parse_controls(opts["controls"]),
        seeds=parse_seeds(opts["seeds"]), val_fraction=opts["val_fraction"], split_seed=opts["split_seed"],
        train=train_config_from(opts), **extra,
    )
    out = Path(opts["out"]) if opts["out"] else default_out(kind, config.to_json(), config.method, config.model, config.data)
    device = resolve_device(opts["device"])
    experiment = SparseExperiment.prepare(config, out, device=device, progress=None if opts["quiet"] else TqdmProgress(),
                                          stack=opts["stack"], workers=worker_setting_from(opts))
    if not opts["quiet"]:
        click.echo(f"ticketlab {kind}: {config.method} on {config.model}/{config.data}, densities "
                   f"{list(config.densities)}, seeds {list(config.seeds)}, device {device}; writing to {out}", err=True)
    _finish(experiment.run(), experiment.out, opts["quiet"])


_dst_options = [
    click.option("--update-every", default="100it", show_default=True,
                 help="RigL / SET: ΔT between mask updates (a step such as 100it); a run must make at least 4 updates."),
    click.option("--alpha", default=0.3, show_default=True, type=float,
                 help="RigL / SET: initial drop fraction (cosine-decayed)."),
    click.option("--end-fraction", default=0.75, show_default=True, type=float,
                 help="RigL / SET: stop updating the mask after this fraction of training (T_end)."),
]

_common_sparse = [
    click.option("--density", required=True, help="Fraction of prunable weights kept; a comma list runs several."),
    click.option("--ignore", multiple=True, metavar="PATTERN", help="Parameters never pruned; repeatable."),
    click.option("--seeds", default="1", show_default=True, help="Replicates: a count (3 = seeds 0,1,2) or a list."),
    click.option("--out", default=None, help="Run directory (default: runs/KIND-METHOD-MODEL-DATA-<config hash>)."),
]


def _apply(options, func):
    for option in reversed(options):
        func = option(func)
    return func


@click.command("prune-init")
@click.option("--method", default="snip", show_default=True,
              type=click.Choice(["snip", "grasp", "synflow", "magnitude", "random"]), help="Scorer applied at θ0.")
@data_options
@click.option("--scope", default="global", show_default=True, type=click.Choice(["global", "layer"]),
              help="Rank all layers together, or give each layer its density from --distribution.")
@click.option("--distribution", default="uniform", show_default=True, type=click.Choice(["uniform", "er", "erk"]),
              help="Layer-wise densities for --scope layer.")
@click.option("--controls", default="none", show_default=True,
              help="Comma list of sanity checks: shuffle, reinit, invert; or none.")
@click.option("--allow-collapse", is_flag=True, help="Train masks that prune a whole layer (otherwise refused).")
@click.option("--score-batches", default=1, show_default=True, type=int, help="Batches SNIP / GraSP score on.")
@click.option("--score-batch-size", default=256, show_default=True, type=int)
@click.option("--synflow-iterations", default=100, show_default=True, type=int)
@click.option("--synflow-double", is_flag=True, help="Score SynFlow in float64 (deep nets overflow float32).")
@train_options
def prune_init(**opts) -> None:
    """Prune at initialisation (SNIP, GraSP, SynFlow, magnitude, random), then train the mask from θ0."""
    _run_sparse("prune-init", opts)


prune_init = _apply(_common_sparse, prune_init)


@click.command("sparse-train")
@click.option("--method", default="rigl", show_default=True, type=click.Choice(["rigl", "set"]))
@data_options
@click.option("--scope", default="layer", show_default=True, type=click.Choice(["layer"]), hidden=True)
@click.option("--distribution", default="erk", show_default=True, type=click.Choice(["uniform", "er", "erk"]),
              help="Layer-wise densities of the initial random mask (kept constant during training).")
@click.option("--controls", default="none", show_default=True, help="static (the initial mask, never updated), or none.")
@train_options
def sparse_train(**opts) -> None:
    """Dynamic sparse training (RigL, SET): the mask moves during training at constant density."""
    _run_sparse("sparse-train", opts)


sparse_train = _apply(_common_sparse + _dst_options, sparse_train)


@click.command()
@click.option("--methods", default="imp,snip,grasp,synflow,random,rigl,set", show_default=True,
              help="Comma list of methods to compare.")
@click.option("--densities", default="0.2,0.05,0.01", show_default=True, help="Comma list of target densities.")
@click.option("--seeds", default="1", show_default=True, help="Replicates: a count (3 = seeds 0,1,2) or a list.")
@data_options
@click.option("--distribution", default="erk", show_default=True, type=click.Choice(["uniform", "er", "erk"]),
              help="Layer-wise densities for random, RigL and SET (the PaI scorers rank globally).")
@click.option("--imp-rate", default=0.2, show_default=True, type=float, help="IMP's pruning rate per round.")
@click.option("--out", default=None, help="Comparison directory (default: runs/compare-MODEL-DATA-<config hash>).")
@train_options
def compare(**opts) -> None:
    """Run (or resume) every method at every density with one training recipe; table + compare.png."""
    from ..experiments.compare import CompareConfig, CompareExperiment, format_compare
    from ..train import resolve_device

    opts["quiet"] = quiet_here(opts["quiet"])
    config = CompareConfig(
        methods=tuple(split_list(opts["methods"])), densities=parse_floats(opts["densities"], "--densities"),
        model=opts["model"], width=opts["width"], data=opts["data"], data_dir=opts["data_dir"],
        seeds=parse_seeds(opts["seeds"]),
        distribution=opts["distribution"], imp_rate=opts["imp_rate"], update_every=opts["update_every"],
        alpha=opts["alpha"], end_fraction=opts["end_fraction"], val_fraction=opts["val_fraction"],
        split_seed=opts["split_seed"], train=train_config_from(opts),
    )
    out = Path(opts["out"]) if opts["out"] else default_out("compare", config.to_json(), config.model, config.data)
    device = resolve_device(opts["device"])
    experiment = CompareExperiment.prepare(config, out, device=device, progress=None if opts["quiet"] else TqdmProgress(),
                                           stack=opts["stack"], workers=worker_setting_from(opts))
    if not opts["quiet"]:
        click.echo(f"ticketlab compare: {', '.join(config.methods)} at {list(config.densities)}, "
                   f"seeds {list(config.seeds)}, device {device}; writing to {out}", err=True)
    result = experiment.run()
    if not opts["quiet"]:
        click.echo(format_compare(result["rows"], config))
        click.echo(f"\nWrote {out / 'compare.csv'}, {out / 'compare.md'} and {out / 'compare.png'}.")


compare = _apply(_dst_options, compare)
