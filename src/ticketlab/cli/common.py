"""Pieces shared by every ``ticketlab`` sub-command: list parsing, training flags, progress bars.

Commands that train (imp, prune-init, sparse-train, compare) take the same training flags through
`train_options` and turn them into a `TrainConfig` with `train_config_from`, so the flags mean the
same thing everywhere.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import TicketlabError


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"3"`` means three replicates (seeds 0, 1, 2); ``"0,5,7"`` lists the seeds themselves."""
    try:
        parts = [int(p) for p in split_list(text)]
    except ValueError:
        raise TicketlabError(f"Cannot read --seeds {text!r}: give a count like 3 or a list like 0,1,2.") from None
    if not parts:
        raise TicketlabError("--seeds needs at least one seed.")
    if len(parts) == 1 and "," not in text:
        if parts[0] < 1:
            raise TicketlabError("--seeds needs at least one seed.")
        return tuple(range(parts[0]))
    return tuple(parts)


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    """``"0.2,0.05"`` -> ``(0.2, 0.05)``; a clear error naming ``flag`` otherwise."""
    try:
        values = tuple(float(p) for p in split_list(text))
    except ValueError:
        raise TicketlabError(f"Cannot read {flag} {text!r}: give numbers separated by commas.") from None
    if not values:
        raise TicketlabError(f"{flag} needs at least one value.")
    return values


def parse_controls(text: str) -> tuple[str, ...]:
    """A comma list of control names; ``none`` (or empty) means no controls."""
    return () if text.strip().lower() in ("", "none") else tuple(split_list(text))


def default_out(kind: str, config_json: dict[str, Any], *parts: str) -> Path:
    """``runs/KIND-PARTS-<hash of the resolved config>``: the same config always maps to the same dir."""
    digest = hashlib.sha256(json.dumps(config_json, sort_keys=True).encode()).hexdigest()[:8]
    return Path("runs") / "-".join([kind, *parts, digest])


class TqdmProgress:
    """Progress bars on stderr (hidden when stderr is not a terminal)."""

    def __call__(self, description: str, total: int, initial: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=description, leave=False, disable=None,
                    dynamic_ncols=True, file=sys.stderr)


def data_options(func: Callable) -> Callable:
    """``--model --width --data --data-dir --val-fraction --split-seed``."""
    options = [
        click.option("--model", default="lenet300", show_default=True, help="Registered model (see `ticketlab models`)."),
        click.option("--width", default=1.0, show_default=True, type=float,
                     help="Multiplier of the model's hidden widths (units, channels): 0.5 halves LeNet-300-100 "
                          "to 150-50, 2 doubles it."),
        click.option("--data", default="mnist5k", show_default=True, help="Registered dataset (see `ticketlab datasets`)."),
        click.option("--data-dir", default=None, help="Directory holding MNIST / CIFAR-10 files (for --data mnist|cifar10)."),
        click.option("--val-fraction", default=0.1, show_default=True, type=float,
                     help="Share of the training data held out for validation."),
        click.option("--split-seed", default=0, show_default=True, type=int, help="Seed of the train/val/test split."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def train_options(func: Callable) -> Callable:
    """The training recipe flags, identical in every command that trains."""
    options = [
        click.option("--steps", default="10ep", show_default=True,
                     help="Training budget with its unit: iterations (500it) or epochs (2ep)."),
        click.option("--optimizer", default="adam", show_default=True, type=click.Choice(["sgd", "adam", "adamw"])),
        click.option("--lr", default=1.2e-3, show_default=True, type=float, help="Learning rate."),
        click.option("--batch-size", default=60, show_default=True, type=int),
        click.option("--weight-decay", default=0.0, show_default=True, type=float),
        click.option("--momentum", default=0.0, show_default=True, type=float, help="SGD momentum."),
        click.option("--nesterov", is_flag=True, help="Nesterov momentum (SGD)."),
        click.option("--warmup", default="0it", show_default=True, help="Linear learning-rate warm-up (step)."),
        click.option("--lr-drops", default="", help="Comma list of steps where the LR is multiplied by --lr-gamma."),
        click.option("--lr-gamma", default=0.1, show_default=True, type=float),
        click.option("--eval-every", default=None, help="Evaluation interval (step); default: 20 evaluations per run."),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, or auto (CUDA when available)."),
        click.option("--stack", default="auto", show_default=True,
                     help="Networks trained at once as one stacked computation (a round's ticket and controls, "
                          "seeds, densities): auto (where it is faster: small networks; always on a GPU), "
                          "off, or a group size."),
        click.option("--workers", default=1, show_default=True, type=int,
                     help="Local processes for the independent seeds (and comparison cells); the cores are "
                          "divided among them."),
        click.option("--cluster", default=None, metavar="ADDRESS",
                     help="Run the independent seeds / cells on the Dask scheduler at ADDRESS (tcp://HOST:8786); "
                          "the run directory must be on a filesystem every worker sees. "
                          "Needs pip install 'ticketlab[cluster]'."),
        click.option("--quiet", is_flag=True, help="No progress bars and no table."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def worker_setting_from(opts: dict[str, Any]):
    """The `WorkerSetting` described by ``--workers`` and ``--cluster``."""
    from ..units import WorkerSetting

    return WorkerSetting(workers=opts["workers"], cluster=opts["cluster"])


def quiet_here(quiet: bool) -> bool:
    """Under ``torchrun`` only rank 0 shows progress bars and tables (every rank does the work)."""
    from ..train.distributed import is_main_process

    return quiet or not is_main_process()


def train_config_from(opts: dict[str, Any]):
    """The `TrainConfig` described by the flags of `train_options`."""
    from ..train import TrainConfig

    return TrainConfig(
        optimizer=opts["optimizer"], lr=opts["lr"], batch_size=opts["batch_size"], steps=opts["steps"],
        momentum=opts["momentum"], nesterov=opts["nesterov"], weight_decay=opts["weight_decay"],
        warmup=opts["warmup"], lr_drops=tuple(split_list(opts["lr_drops"])), lr_gamma=opts["lr_gamma"],
        eval_every=opts["eval_every"],
    )
