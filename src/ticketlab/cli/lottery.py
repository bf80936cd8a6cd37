"""The ``ticketlab`` command line: parses flags into the library's config objects and prints.

No algorithm lives here. Every user-facing failure ends as one sentence on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import TicketlabError
from .common import (TqdmProgress, data_options, default_out, parse_controls, parse_floats, parse_seeds, quiet_here,
                     train_config_from, train_options, worker_setting_from)

def _parse_layer_rates(items: tuple[str, ...]) -> tuple[tuple[str, float], ...] | None:
    if not items:
        return None
    out = []
    for item in items:
        pattern, sep, value = item.rpartition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = None
        if not sep or not pattern or rate is None:
            raise TicketlabError(f"Cannot read --layer-rate {item!r}: write PATTERN=RATE, e.g. output=0.1.")
        out.append((pattern, rate))
    return tuple(out)


@click.command()
@data_options
@click.option("--rounds", default=12, show_default=True, type=int, help="Pruning rounds after the dense round 0.")
@click.option("--rate", default=None,
              help="Fraction of the remaining weights pruned per round  [default: 0.2]; a comma list gives "
                   "one rate per round, the last repeating (0.5,0.5,0.2).")
@click.option("--target-density", default=None, type=float,
              help="Instead of --rate: the one constant rate with which --rounds rounds end at this fraction "
                   "of the weights or just below (--rounds 1: one-shot pruning with rewinding).")
@click.option("--layer-rate", "layer_rates", multiple=True, metavar="PATTERN=RATE",
              help="Per-layer rate (exact name, suffix, regex, or 'output'); repeatable. "
                   "Default with --scope layer: output at half the round's rate, as in the LTH paper.")
@click.option("--scope", default="layer", show_default=True, type=click.Choice(["layer", "global"]),
              help="Rank weights within each layer or across all layers.")
@click.option("--ignore", multiple=True, metavar="PATTERN", help="Parameters never pruned; repeatable.")
@click.option("--rewind", default="0", show_default=True,
              help="Rewind point: 0 for theta_0, or a step such as 500it / 1ep (late rewinding).")
@click.option("--controls", default="reinit", show_default=True,
              help="Comma list of controls: reinit, random, shuffle; or 'none'.")
@click.option("--seeds", default="1", show_default=True, help="Replicates: a count (3 = seeds 0,1,2) or a list (0,4).")
@click.option("--tolerance", default=0.5, show_default=True, type=float,
              help="A round is a winning ticket if its test accuracy is within this many points of dense.")
@click.option("--early-bird", default=None, type=float, metavar="EPS",
              help="Early-bird ticket: draw round 1's mask at every evaluation of round 0 and take it once the "
                   "last --early-bird-window masks differ from the newest in under a fraction EPS of the weights. "
                   "Round 0 stops there if --dense-accuracy is given; otherwise it trains on to be the dense "
                   "reference (its extra iterations are not counted in the ticket's cost).")
@click.option("--early-bird-window", default=None, type=int, help="Masks compared by --early-bird  [default: 5].")
@click.option("--dense-accuracy", default=None, type=float,
              help="The dense network's test accuracy (in %, e.g. from another run): the reference of --tolerance "
                   "instead of round 0's.")
@click.option("--out", default=None, help="Run directory (default: runs/imp-MODEL-DATA-<config hash>).")
@train_options
def imp(**opts) -> None:
    """Find lottery tickets by iterative magnitude pruning with rewinding, beside controls.

    Re-running the same command on the same --out resumes where it stopped.
    """
    from ..lottery import IMPConfig, IMPExperiment
    from ..report import format_table, plot_report
    from ..train import resolve_device

    config = IMPConfig(
        model=opts["model"], width=opts["width"], data=opts["data"], data_dir=opts["data_dir"], rounds=opts["rounds"],
        rate=None if opts["rate"] is None else parse_floats(opts["rate"], "--rate"),
        target_density=opts["target_density"], early_bird=opts["early_bird"], dense_accuracy=opts["dense_accuracy"],
        **({} if opts["early_bird_window"] is None else {"early_bird_window": opts["early_bird_window"]}),
        layer_rates=_parse_layer_rates(opts["layer_rates"]), scope=opts["scope"],
        ignore=tuple(opts["ignore"]), rewind=opts["rewind"], controls=parse_controls(opts["controls"]),
        seeds=parse_seeds(opts["seeds"]), tolerance=opts["tolerance"], val_fraction=opts["val_fraction"],
        split_seed=opts["split_seed"], train=train_config_from(opts),
    )
    opts["quiet"] = quiet_here(opts["quiet"])
    out = opts["out"]
    if out is None:
        out = default_out("imp", config.to_json(), config.model, config.data)
    device = resolve_device(opts["device"])
    progress = None if opts["quiet"] else TqdmProgress()
    experiment = IMPExperiment.prepare(config, out, device=device, progress=progress, stack=opts["stack"],
                                       workers=worker_setting_from(opts))
    if not opts["quiet"]:
        click.echo(f"ticketlab imp: {config.model} on {config.data}, {config.rounds} rounds, "
                   f"seeds {list(config.seeds)}, device {device}; writing to {out}", err=True)
    summary = experiment.run()
    plot = plot_report(summary, experiment.out / "report.png", run_dir=experiment.out)
    if not opts["quiet"]:
        click.echo(format_table(summary))
        click.echo(f"\nWrote {Path(out) / 'summary.json'} and {plot}.")


@click.command("mask")
@click.argument("mask_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", default=None, help="Check the mask against this registered model.")
@click.option("--data", default="mnist5k", show_default=True, help="Dataset that sets the model's input shape.")
@click.option("--data-dir", default=None, help="Directory for --data mnist|cifar10.")
def mask_info(mask_file: Path, model: str | None, data: str, data_dir: str | None) -> None:
    """Show a mask file's density per layer; with --model, check it fits that model."""
    from ..masks import Mask

    mask = Mask.load(mask_file)
    if model is not None:
        from ..data import load_dataset
        from ..models import create_model

        splits = load_dataset(data, root=data_dir)
        mask.validate(create_model(model, splits.input_shape, splits.num_classes, seed=0))
    width = max([len(n) for n in mask] + [7])
    for name, tensor in mask.items():
        kept, total = int(tensor.sum()), tensor.numel()
        click.echo(f"{name:{width}s}  {kept:>10d} / {total:<10d} {100 * kept / total:7.2f}% kept")
    click.echo(f"{'overall':{width}s}  {mask.num_kept():>10d} / {mask.num_total():<10d} "
               f"{100 * mask.density():7.2f}% kept")


@click.command()
def models() -> None:
    """List the registered models."""
    from ..models import list_models

    for info in list_models():
        click.echo(f"{info.name:10s}  {info.description}")


@click.command()
def datasets() -> None:
    """List the registered datasets (those marked [dir] read files from --data-dir)."""
    from ..data import list_datasets

    for info in list_datasets():
        flag = " [dir]" if info.needs_root else ""
        click.echo(f"{info.name:10s}  {info.description}{flag}")
