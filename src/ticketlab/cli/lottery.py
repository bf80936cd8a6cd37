"""The ``ticketlab`` command line: parses flags into the library's config objects and prints.

No algorithm lives here. Every user-facing failure ends as one sentence on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..lottery.config import IMPConfig
from .common import default_out, progress_from, quiet_here, recipe_options, recipe_values, run_options, \
    worker_setting_from
from .options import config_from, config_options


@click.command()
@config_options(IMPConfig)
@click.option("--out", default=None, help="Run directory (default: runs/imp-MODEL-DATA-<config hash>).")
@recipe_options
@run_options
def imp(**opts) -> None:
    """Find lottery tickets by iterative magnitude pruning with rewinding, beside controls.

    Re-running the same command on the same --out resumes where it stopped; with more --rounds or
    more --seeds it extends the run (only the new rounds and seeds train).
    """
    from ..lottery import IMPExperiment
    from ..report import format_table, plot_report
    from ..train import resolve_device

    config = config_from(IMPConfig, opts, recipe_values(opts["recipe"], "imp", IMPConfig))
    opts["quiet"] = quiet_here(opts["quiet"])
    out = opts["out"] if opts["out"] is not None else default_out("imp", config.to_json(), config.model,
                                                                  config.data)
    device = resolve_device(opts["device"])
    experiment = IMPExperiment.prepare(config, out, device=device, progress=progress_from(opts), stack=opts["stack"],
                                       workers=worker_setting_from(opts), threads=opts["threads"])
    if not opts["quiet"]:
        click.echo(f"ticketlab imp: {config.model} on {config.data}, {config.rounds} rounds, "
                   f"seeds {list(config.seeds)}, device {device}, {experiment.threads} thread(s); writing to {out}",
                   err=True)
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
        from ..models import create_model, trust_user_code

        trust_user_code(model, data)   # module:function typed on this command line
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
