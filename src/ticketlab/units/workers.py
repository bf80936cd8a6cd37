"""Independent parts of a run (seeds, comparison cells) in several processes or on a Dask cluster.

A run's seeds never depend on one another, nor do the cells of a comparison. With ``--workers N``
the parts go to N local processes; with ``--cluster ADDRESS`` to the workers of a Dask
distributed scheduler (the optional extra ``pip install 'ticketlab[cluster]'``). Dask because it
is a plain pip dependency that starts a local cluster in a second and connects to a scheduler by
address, with futures and nothing else to learn; Ray would bring its own object store and
runtime for work that is only "run this function there".

The run directory stays the single source of truth, on a filesystem every worker sees. The
process that started the run holds its lock (`ticketlab.runs.claim_run_directory`) and writes
the summary at the end; each worker opens the run without claiming it (`Experiment.attach`,
which checks ``config.json``), takes the part's own lock (``.part-<key>.lock``, a blocking
``flock``) and then trains exactly as a single process would: finished units are read back,
checkpoints resumed. Two workers given the same part (a scheduler retrying a task whose worker
it lost) take turns, and the second finds the work done. The metrics log is shared under its own
lock (`ticketlab.runs.MetricsLog`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import validate
from ..errors import TicketlabError
from ..user_code import trust_user_code, trusted_user_code
from ..runs import FileLock
from ..threads import check_threads, set_threads
from ..threads import worker_threads as divided_threads

if TYPE_CHECKING:
    from .base import Experiment

#: Seconds to wait for a Dask scheduler to answer before saying it is unreachable.
CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class WorkerSetting:
    """Where the independent parts of a run execute: ``workers`` local processes (1: this one),
    or the workers of the Dask scheduler at ``cluster`` (e.g. ``tcp://10.0.0.5:8786``)."""

    workers: int = 1
    cluster: str | None = None
    #: Torch threads of each local worker process; None: its share of the cores,
    #: ``max(1, cores // workers)`` (`ticketlab.threads.worker_threads`), so N workers never
    #: oversubscribe the machine. ``ticketlab.threads.resolve_threads(value, step_macs, workers)``
    #: gives the value for ``--threads``. Dask workers keep their own setting.
    threads: int | None = None

    def __post_init__(self) -> None:
        validate.integer(self.workers, "The number of workers --workers", low=1, high=4096)
        if self.cluster is not None and not str(self.cluster).strip():
            raise TicketlabError("--cluster needs the address of a Dask scheduler, e.g. tcp://HOST:8786.")
        if self.threads is not None:
            check_threads(self.threads)

    @property
    def worker_threads(self) -> int:
        """The torch threads each local worker process uses."""
        return self.threads if self.threads is not None else divided_threads(self.workers)

    @property
    def in_process(self) -> bool:
        return self.workers == 1 and self.cluster is None


@dataclass(frozen=True)
class Part:
    """One independent piece of an experiment: the experiment class, its config and run directory
    (the sub-run of a comparison's method), and the seeds it covers."""

    experiment: type
    config: Any
    out: str
    seeds: tuple[int, ...]

    @property
    def key(self) -> str:
        return "seeds-" + "-".join(str(s) for s in self.seeds)


def split_seeds(seeds: Sequence[int], pieces: int) -> list[tuple[int, ...]]:
    """``seeds`` dealt round-robin into ``pieces`` non-empty tuples (``pieces`` ≤ len(seeds))."""
    pieces = max(1, min(pieces, len(seeds)))
    return [tuple(seeds[i::pieces]) for i in range(pieces)]


def check_worker_count(setting: WorkerSetting, units: int, what: str) -> None:
    """More local workers than independent units would leave some idle: one sentence instead."""
    if setting.cluster is None and setting.workers > units:
        raise TicketlabError(f"--workers {setting.workers} is more than the {units} independent {what} of this run; "
                             f"use at most {units}.")


def run_part(part: Part, device: str, stack: Any, threads: int | None = None,
             user_code: tuple[str, ...] = ()) -> None:
    """A worker's job: take ``threads`` torch threads (None: leave them), trust the ``user_code``
    the command line named (``--model/--data module:function``, `trust_user_code`), open the run
    without claiming it, lock the part, do its work."""
    if threads is not None:
        set_threads(threads)
    trust_user_code(*user_code)
    experiment = part.experiment.attach(part.config, part.out, device=device, stack=stack)
    with FileLock(Path(part.out) / f".part-{part.key}.lock"):
        experiment.execute_seeds(part.seeds)


def run_parts(parts: Sequence[Part], setting: WorkerSetting, *, device: str, stack: Any,
              local: Mapping[str, "Experiment"]) -> None:
    """Run every part: in this process by the experiments of ``local`` (run directory ->
    experiment) when ``setting`` is in-process, else on the workers; return once all are done.
    The first failure is raised (a `TicketlabError` keeps its sentence)."""
    if setting.in_process:
        for part in parts:
            with FileLock(Path(part.out) / f".part-{part.key}.lock"):
                local[part.out].execute_seeds(part.seeds)
        return
    if setting.cluster is not None:
        _run_on_dask(parts, setting.cluster, device, stack)
        return
    threads, user_code = setting.worker_threads, trusted_user_code()  # divided cores: never oversubscribe
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or locks
    with ProcessPoolExecutor(max_workers=setting.workers, mp_context=context) as pool:
        futures = [pool.submit(run_part, part, device, stack, threads, user_code) for part in parts]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def connect(address: str):
    """A Dask client of the scheduler at ``address``; one sentence if Dask is missing or the
    scheduler does not answer within `CONNECT_TIMEOUT_S`."""
    try:
        from distributed import Client
    except ImportError:
        raise TicketlabError("--cluster needs Dask distributed: pip install 'ticketlab[cluster]'.") from None
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError, TypeError) as err:
        raise TicketlabError(f"Cannot reach the Dask scheduler at {address!r} ({type(err).__name__}); "
                             "start it (dask scheduler) or check the address.") from None


def check_reachable(setting: WorkerSetting) -> None:
    """Before a run claims its directory: the cluster, if one is named, must answer."""
    if setting.cluster is not None:
        connect(setting.cluster).close()


def _run_on_dask(parts: Sequence[Part], address: str, device: str, stack: Any) -> None:
    client = connect(address)
    try:
        futures = [client.submit(run_part, part, device, stack, None, trusted_user_code(), pure=False,
                                 key=f"ticketlab-{Path(part.out).name}-{part.key}-{os.getpid()}")
                   for part in parts]
        client.gather(futures)
    finally:
        client.close()


__all__ = ["Part", "WorkerSetting", "check_reachable", "check_worker_count", "connect", "run_part", "run_parts", "split_seeds"]
