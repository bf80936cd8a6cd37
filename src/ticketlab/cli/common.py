"""Pieces shared by every ``ticketlab`` sub-command: the run options, the progress display, the
default run directory.

The flags of the configs themselves are generated from the config fields (`options`); this module
holds the options that say *how* to run (device, stacking, workers, threads, logs), which are not
part of a run's ``config.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from ..errors import TicketlabError
from ..progress import Finished
from .options import INT

def default_out(kind: str, config_json: dict[str, Any], *parts: str) -> Path:
    """``runs/KIND-PARTS-<hash of the resolved config>``: the same config always maps to the same dir."""
    digest = hashlib.sha256(json.dumps(config_json, sort_keys=True).encode()).hexdigest()[:8]
    safe = [part.replace(":", "-").replace("/", "-") for part in parts]   # module:function names
    return Path("runs") / "-".join([kind, *safe, digest])


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def finished_line(event: Finished) -> str:
    """One line per finished unit: ``[3/12] seed 0 ticket round 2: 64.0% of weights, test accuracy
    97.12%, elapsed 1m02s, ETA 4m10s``."""
    parts = [f"[{event.done}/{event.total}] {event.label}:"]
    if event.density is not None:
        parts.append(f"{100 * event.density:.1f}% of weights,")
    if event.test_accuracy is not None:
        parts.append(f"test accuracy {event.test_accuracy:.2f}%,")
    parts.append(f"elapsed {_clock(event.elapsed)}")
    if event.eta is not None and event.done < event.total:
        parts.append(f", ETA {_clock(event.eta)}")
    return " ".join(parts).replace(" ,", ",")


class TerminalProgress:
    """The CLI's `ticketlab.progress.Progress`: tqdm bars on a terminal; without one (nohup, SLURM)
    no bars but one line per finished unit on stderr; every evaluation also to TensorBoard with
    ``log_dir``."""

    def __init__(self, log_dir: str | None = None, stream: Any = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet   # only the TensorBoard log (--quiet --log-dir)
        self.tty = not quiet and bool(getattr(self.stream, "isatty", lambda: False)())
        self.board = TensorBoardLog(log_dir) if log_dir else None

    def __call__(self, description: str, total: int, initial: int = 0):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=description, leave=False, disable=not self.tty,
                    dynamic_ncols=True, file=self.stream)

    def finished(self, event: Finished) -> None:
        if not self.tty and not self.quiet:
            print(f"ticketlab: {finished_line(event)}", file=self.stream, flush=True)

    def metrics(self, record: Mapping[str, Any]) -> None:
        if self.board is not None:
            self.board.add(record)


class TensorBoardLog:
    """Evaluation records as TensorBoard scalars: one tag per metric and run key
    (``seed-0/round-2/ticket/test_accuracy``), the iteration as the step."""

    KEYS = ("seed", "round", "density", "method", "run", "control")

    def __init__(self, log_dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TicketlabError("--log-dir needs TensorBoard: pip install 'ticketlab[tensorboard]'.") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def add(self, record: Mapping[str, Any]) -> None:
        prefix = "/".join(f"{k}-{record[k]}" if k in ("seed", "round", "density") else str(record[k])
                          for k in self.KEYS if k in record)
        step = int(record.get("iteration", 0))
        for name, value in record.items():
            if name not in self.KEYS and name != "iteration" and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{name}" if prefix else name, value, step)
        self.writer.flush()


def progress_from(opts: Mapping[str, Any]) -> TerminalProgress | None:
    """The progress display the run options ask for (None with --quiet and no --log-dir)."""
    if opts.get("quiet") and not opts.get("log_dir"):
        return None
    return TerminalProgress(opts.get("log_dir"), quiet=bool(opts.get("quiet")))


threads_option = click.option(
    "--threads", default="auto", show_default=True,
    help="CPU threads: auto (one per 2·10⁹ multiply-accumulates of a step, so 1 for LeNet, Conv-2, ResNet-20 at "
         "batch 60 and the tiny LM; at most the cores, divided among --workers) or a number.")


def user_code_options(*flags: str) -> Callable[[Callable], Callable]:
    """``--model`` and/or ``--data module:function`` (``flags``) for commands that rebuild what a
    run was trained with (export, bench, stability): a run's own files never make ticketlab import
    code, so a run trained on user code needs its spec typed again here (`trust_typed_code`). The
    command receives them as ``user_model`` / ``user_data`` (None when not typed)."""
    helps = {"--model": "The module:function that built the run's model, typed again to allow importing it "
                        "(only for runs trained with --model module:function).",
             "--data": "The module:function that loaded the run's data, typed again to allow importing it "
                       "(only for runs trained with --data module:function)."}

    def decorate(func: Callable) -> Callable:
        for flag in reversed(flags):
            func = click.option(flag, f"user_{flag[2:]}", default=None, metavar="MODULE:FUNCTION",
                                help=helps[flag])(func)
        return func
    return decorate


def trust_typed_code(model: str | None, data: str | None = None) -> None:
    """Allow importing the ``--model`` / ``--data`` specs of `user_code_options`; anything else
    than ``module:function`` is one sentence (a registered name comes from the run itself)."""
    from ..user_code import is_user_code, trust_user_code

    for flag, spec in (("--model", model), ("--data", data)):
        if spec is not None and not is_user_code(spec):
            raise TicketlabError(f"{flag} here only names user code (module:function, as the run was trained "
                                 f"with); {spec!r} is not, and a registered name is read from the run itself.")
    trust_user_code(model, data)


def run_options(func: Callable) -> Callable:
    """How to run (not part of the config): device, stacking, workers, threads, logs, quiet."""
    options = [
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, or auto (CUDA when available)."),
        click.option("--stack", default="auto", show_default=True,
                     help="Networks trained at once as one stacked computation (a round's ticket and controls, "
                          "seeds, densities): auto (where it is faster: small networks; always on a GPU), "
                          "off, or a group size."),
        click.option("--workers", default=1, show_default=True, type=INT,
                     help="Local processes for the independent seeds (and comparison cells); the cores are "
                          "divided among them."),
        click.option("--cluster", default=None, metavar="ADDRESS",
                     help="Run the independent seeds / cells on the Dask scheduler at ADDRESS (tcp://HOST:8786); "
                          "the run directory must be on a filesystem every worker sees. "
                          "Needs pip install 'ticketlab[cluster]'."),
        threads_option,
        click.option("--log-dir", default=None, metavar="DIR",
                     help="Also write every evaluation as TensorBoard scalars to DIR "
                          "(needs pip install 'ticketlab[tensorboard]')."),
        click.option("--quiet", is_flag=True, help="No progress display and no table."),
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




def recipe_options(func: Callable) -> Callable:
    """``--recipe NAME``: a paper's hyperparameters as the defaults (flags given still win)."""
    return click.option("--recipe", default=None, metavar="NAME",
                        help="A named recipe of a paper's hyperparameters (see `ticketlab recipes`); flags given "
                             "on the command line override its values.")(func)


def recipe_values(name: str | None, command: str, cls: type) -> dict[str, Any]:
    """The recipe's values keyed by config field name (its keys are option names, ``batch-size``)."""
    if name is None:
        return {}
    from ..recipes import recipe_defaults
    from .options import flagged_fields

    fields = {flag.option_name(f.name).lstrip("-"): f.name for f, flag in flagged_fields(cls)}
    values = {}
    for option, value in recipe_defaults(name, command).items():
        key = option.lstrip("-")
        if key not in fields:
            raise TicketlabError(f"Recipe {name!r} sets --{key}, which {command} does not take.")
        values[fields[key]] = tuple(value) if isinstance(value, list) else value
    return values


__all__ = ["TerminalProgress", "threads_option", "TensorBoardLog", "default_out", "finished_line", "progress_from", "quiet_here",
           "recipe_options", "recipe_values", "run_options", "worker_setting_from"]
