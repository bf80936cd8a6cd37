"""The ``ticketlab`` command line: parses flags into the library's config objects and prints.

No algorithm lives here. Every user-facing failure ends as one sentence on stderr and exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import click

from .errors import TicketlabError

EXIT_USAGE = 2


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_seeds(text: str) -> tuple[int, ...]:
    """``"3"`` means three replicates (seeds 0, 1, 2); ``"0,5,7"`` lists the seeds themselves."""
    try:
        parts = [int(p) for p in _split(text)]
    except ValueError:
        raise TicketlabError(f"Cannot read --seeds {text!r}: give a count like 3 or a list like 0,1,2.") from None
    if len(parts) == 1 and "," not in text:
        if parts[0] < 1:
            raise TicketlabError("--seeds needs at least one seed.")
        return tuple(range(parts[0]))
    return tuple(parts)


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


class _TqdmProgress:
    """Progress bars on stderr (hidden when stderr is not a terminal)."""

    def __call__(self, description: str, total: int, initial: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=description, leave=False, disable=None,
                    dynamic_ncols=True, file=sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ticketlab")
def cli() -> None:
    """ticketlab: find, test and deploy sparse subnetworks (lottery tickets) of neural networks."""


@cli.command()
@click.option("--model", default="lenet300", show_default=True, help="Registered model (see `ticketlab models`).")
@click.option("--data", default="mnist5k", show_default=True, help="Registered dataset (see `ticketlab datasets`).")
@click.option("--data-dir", default=None, help="Directory holding MNIST / CIFAR-10 files (for --data mnist|cifar10).")
@click.option("--rounds", default=12, show_default=True, type=int, help="Pruning rounds after the dense round 0.")
@click.option("--rate", default=0.2, show_default=True, type=float,
              help="Fraction of the remaining weights pruned per round.")
@click.option("--layer-rate", "layer_rates", multiple=True, metavar="PATTERN=RATE",
              help="Per-layer rate (exact name, suffix, regex, or 'output'); repeatable. "
                   "Default with --scope layer: output=RATE/2, as in the LTH paper.")
@click.option("--scope", default="layer", show_default=True, type=click.Choice(["layer", "global"]),
              help="Rank weights within each layer or across all layers.")
@click.option("--ignore", multiple=True, metavar="PATTERN", help="Parameters never pruned; repeatable.")
@click.option("--rewind", default="0", show_default=True,
              help="Rewind point: 0 for theta_0, or a step such as 500it / 1ep (late rewinding).")
@click.option("--controls", default="reinit", show_default=True,
              help="Comma list of controls: reinit, random, shuffle; or 'none'.")
@click.option("--seeds", default="1", show_default=True, help="Replicates: a count (3 = seeds 0,1,2) or a list (0,4).")
@click.option("--steps", default="10ep", show_default=True, help="Training budget per round (500it or 2ep).")
@click.option("--optimizer", default="adam", show_default=True, type=click.Choice(["sgd", "adam", "adamw"]))
@click.option("--lr", default=1.2e-3, show_default=True, type=float, help="Learning rate.")
@click.option("--batch-size", default=60, show_default=True, type=int)
@click.option("--weight-decay", default=0.0, show_default=True, type=float)
@click.option("--momentum", default=0.0, show_default=True, type=float, help="SGD momentum.")
@click.option("--nesterov", is_flag=True, help="Nesterov momentum (SGD).")
@click.option("--warmup", default="0it", show_default=True, help="Linear learning-rate warm-up (step).")
@click.option("--lr-drops", default="", help="Comma list of steps where the LR is multiplied by --lr-gamma.")
@click.option("--lr-gamma", default=0.1, show_default=True, type=float)
@click.option("--eval-every", default=None, help="Evaluation interval (step); default: 20 evaluations per round.")
@click.option("--val-fraction", default=0.1, show_default=True, type=float,
              help="Share of the training data held out for validation.")
@click.option("--split-seed", default=0, show_default=True, type=int, help="Seed of the train/val/test split.")
@click.option("--tolerance", default=0.5, show_default=True, type=float,
              help="A round is a winning ticket if its test accuracy is within this many points of dense.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, or auto (CUDA when available).")
@click.option("--out", default=None, help="Run directory (default: runs/imp-MODEL-DATA-<config hash>).")
@click.option("--quiet", is_flag=True, help="No progress bars and no table.")
def imp(**opts) -> None:
    """Find lottery tickets by iterative magnitude pruning with rewinding, beside controls.

    Re-running the same command on the same --out resumes where it stopped.
    """
    from .lottery import IMPConfig, IMPExperiment
    from .report import format_table, plot_report
    from .train import TrainConfig, resolve_device

    train_config = TrainConfig(
        optimizer=opts["optimizer"], lr=opts["lr"], batch_size=opts["batch_size"], steps=opts["steps"],
        momentum=opts["momentum"], nesterov=opts["nesterov"], weight_decay=opts["weight_decay"],
        warmup=opts["warmup"], lr_drops=tuple(_split(opts["lr_drops"])), lr_gamma=opts["lr_gamma"],
        eval_every=opts["eval_every"],
    )
    controls = () if opts["controls"].strip().lower() == "none" else tuple(_split(opts["controls"]))
    config = IMPConfig(
        model=opts["model"], data=opts["data"], data_dir=opts["data_dir"], rounds=opts["rounds"],
        rate=opts["rate"], layer_rates=_parse_layer_rates(opts["layer_rates"]), scope=opts["scope"],
        ignore=tuple(opts["ignore"]), rewind=opts["rewind"], controls=controls,
        seeds=_parse_seeds(opts["seeds"]), tolerance=opts["tolerance"], val_fraction=opts["val_fraction"],
        split_seed=opts["split_seed"], train=train_config,
    )
    out = opts["out"]
    if out is None:
        digest = hashlib.sha256(json.dumps(config.to_json(), sort_keys=True).encode()).hexdigest()[:8]
        out = Path("runs") / f"imp-{config.model}-{config.data}-{digest}"
    device = resolve_device(opts["device"])
    progress = None if opts["quiet"] else _TqdmProgress()
    experiment = IMPExperiment.prepare(config, out, device=device, progress=progress)
    if not opts["quiet"]:
        click.echo(f"ticketlab imp: {config.model} on {config.data}, {config.rounds} rounds, "
                   f"seeds {list(config.seeds)}, device {device}; writing to {out}", err=True)
    summary = experiment.run()
    plot = plot_report(summary, Path(out) / "report.png")
    if not opts["quiet"]:
        click.echo(format_table(summary))
        click.echo(f"\nWrote {Path(out) / 'summary.json'} and {plot}.")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--png", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the plot (default: RUN_DIR/report.png).")
def report(run_dir: Path, png: Path | None) -> None:
    """Print the results table of a run directory and write its plot (report.png)."""
    from .report import format_table, load_summary, plot_report

    summary = load_summary(run_dir)
    click.echo(format_table(summary))
    path = plot_report(summary, png or run_dir / "report.png")
    click.echo(f"\nWrote {path}.")


@cli.command("mask")
@click.argument("mask_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", default=None, help="Check the mask against this registered model.")
@click.option("--data", default="mnist5k", show_default=True, help="Dataset that sets the model's input shape.")
@click.option("--data-dir", default=None, help="Directory for --data mnist|cifar10.")
def mask_info(mask_file: Path, model: str | None, data: str, data_dir: str | None) -> None:
    """Show a mask file's density per layer; with --model, check it fits that model."""
    from .masks import Mask

    mask = Mask.load(mask_file)
    if model is not None:
        from .data import load_dataset
        from .models import create_model

        splits = load_dataset(data, root=data_dir)
        mask.validate(create_model(model, splits.input_shape, splits.num_classes, seed=0))
    width = max([len(n) for n in mask] + [7])
    for name, tensor in mask.items():
        kept, total = int(tensor.sum()), tensor.numel()
        click.echo(f"{name:{width}s}  {kept:>10d} / {total:<10d} {100 * kept / total:7.2f}% kept")
    click.echo(f"{'overall':{width}s}  {mask.num_kept():>10d} / {mask.num_total():<10d} "
               f"{100 * mask.density():7.2f}% kept")


@cli.command()
def models() -> None:
    """List the registered models."""
    from .models import list_models

    for info in list_models():
        click.echo(f"{info.name:10s}  {info.description}")


@cli.command()
def datasets() -> None:
    """List the registered datasets (those marked [dir] read files from --data-dir)."""
    from .data import list_datasets

    for info in list_datasets():
        flag = " [dir]" if info.needs_root else ""
        click.echo(f"{info.name:10s}  {info.description}{flag}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one sentence and exit code 2."""
    try:
        cli.main(args=argv, prog_name="ticketlab", standalone_mode=False)
    except TicketlabError as err:
        click.echo(f"ticketlab: error: {err}", err=True)
        return EXIT_USAGE
    except click.ClickException as err:
        click.echo(f"ticketlab: error: {err.format_message()}", err=True)
        return EXIT_USAGE
    except click.exceptions.Abort:
        click.echo("ticketlab: interrupted; run the same command again to resume.", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("ticketlab: interrupted; run the same command again to resume.", err=True)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
