"""Run directories: claimed atomically, locked while in use, resumable after a kill at any write.

A run directory stores the resolved configuration in ``config.json``; reusing the directory with
a different configuration is refused, and reusing it with the same one resumes. Claiming happens
under an exclusive lock (``flock`` on ``OUT/.lock``, which records the holder's PID) that the run
holds until it ends, so two processes never write into one run: the second is refused with one
sentence naming the first one's PID. Under the lock, temporary files left by a killed run are
removed first, so they never block the rerun. Every file is written through `ticketlab.files`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import TicketlabError
from .files import atomic_path, is_temporary, read_json, remove_leftovers, write_json

try:  # POSIX; without it (Windows) runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
#: Sub-directories that hold runs of their own (each with its own lock): DDP replicas of rank K.
RANK_PREFIX = ".rank-"

__all__ = ["FileLock", "LOCK_NAME", "MetricsLog", "RANK_PREFIX", "RunLock", "check_run_directory", "claim_run_directory"]


class RunLock:
    """An exclusive lock on a run directory, held from `claim_run_directory` until `release`.

    The lock is an ``flock`` on ``OUT/.lock``: the kernel drops it when the process dies, so a
    killed run never leaves a stale lock behind. The file holds the holder's PID for the message
    a second process gets.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._fd: int | None = None
        if fcntl is None:  # pragma: no cover
            return
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if holder == str(os.getpid()):
                raise TicketlabError(f"{str(self.directory)!r} is already claimed by this process; "
                                     "finish or release that run first.") from None
            raise TicketlabError(f"{str(self.directory)!r} is in use by another ticketlab run (PID {holder}); "
                                 "wait for it to finish or choose another --out.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up (idempotent); the lock file stays, holding no PID lock."""
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()


class FileLock:
    """A blocking exclusive ``flock`` on ``path`` for a ``with`` block: processes that share a run
    directory (`ticketlab.units.workers`) take turns. The kernel drops it if the holder dies."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> "FileLock":
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None


class MetricsLog:
    """Append-only JSON-lines log of evaluations (``metrics.jsonl``), flushed after every line.

    Resuming an interrupted training segment first drops the lines it is about to write again and
    any line torn by a kill (`truncate_after`), so the log of a resumed run equals that of an
    uninterrupted one, byte for byte.
    """

    def __init__(self, path: str | os.PathLike, listener: Callable[[Mapping[str, Any]], None] | None = None):
        self.path = Path(path)
        self.listener = listener   # also told every record (e.g. TensorBoard), after it is written

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            with self.path.open("a") as handle:
                handle.write(json.dumps(dict(record), sort_keys=False) + "\n")
                handle.flush()
        if self.listener is not None:
            self.listener(record)

    def _exclusive(self) -> "FileLock":
        """Several worker processes share one log (``--workers``): appends and rewrites take turns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(self.path.parent / f".{self.path.name}.lock")

    def _lines(self) -> list[str]:
        return self.path.read_text().splitlines(keepends=True) if self.path.exists() else []

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self._lines():
            record = _parse_line(line)
            if record is not None:
                out.append(record)
        return out

    def truncate_after(self, key: Mapping[str, Any], iteration: int) -> None:
        """Drop records matching ``key`` whose iteration is beyond ``iteration``, and torn lines.

        The file is rewritten (atomically) only when something is dropped.
        """
        with self._exclusive():
            self._truncate_after(key, iteration)

    def _truncate_after(self, key: Mapping[str, Any], iteration: int) -> None:
        lines = self._lines()
        kept = []
        for line in lines:
            record = _parse_line(line)
            if record is None:
                continue
            if all(record.get(k) == v for k, v in key.items()) and record.get("iteration", -1) > iteration:
                continue
            kept.append(line)
        if len(kept) != len(lines):
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(kept))


def _parse_line(line: str) -> dict[str, Any] | None:
    """A complete record, or None for a line torn by a kill (no newline, or not valid JSON)."""
    if not line.endswith("\n"):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _is_run_record(record: Any) -> bool:
    return isinstance(record, dict) and set(record) == {"kind", "config"} and isinstance(record["config"], dict)


def _foreign_entries(out: Path) -> list[str]:
    """Names in ``out`` that a fresh claim would not expect (anything but the lock and temporaries)."""
    if not out.is_dir():
        return []
    return sorted(e.name for e in out.iterdir() if e.name != LOCK_NAME and not is_temporary(e.name))


def _nested_run(directory: Path) -> bool:
    """A sub-directory that is a run of its own (a DDP replica or a comparison's method run)."""
    return directory.name.startswith(RANK_PREFIX) or (directory / LOCK_NAME).exists()


#: ``extends(old_config, new_config)``: may a run of ``old_config`` grow into ``new_config``
#: (more rounds, seeds, densities or methods; see `Experiment.extends`)?
Extension = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]


#: What a run directory holds for a configuration (`_directory_state`): nothing yet, this very
#: run, or a run this configuration extends (its config.json is then rewritten by the claim).
FREE, SAME, EXTENDED = "free", "same", "extended"


def _directory_state(out: Path, record: dict[str, Any], extends: Extension | None) -> str:
    """`FREE`, `SAME` or `EXTENDED` for the run ``record`` in ``out``, reading ``out/config.json``
    once; a TicketlabError (one sentence) where the run would be refused."""
    if out.exists() and not out.is_dir():
        raise TicketlabError(f"--out {str(out)!r} is a file, not a directory.")
    if (out / "config.json").exists():
        return _compare_existing(out, read_json(out / "config.json"), record, extends)
    if _foreign_entries(out):
        raise TicketlabError(f"--out {str(out)!r} is a non-empty directory that holds no ticketlab run.")
    return FREE


def _compare_existing(out: Path, existing: Any, record: dict[str, Any], extends: Extension | None) -> str:
    """``existing`` (``out``'s config.json) must be a ticketlab run with the same configuration
    (`SAME`), or one that ``extends`` lets the new configuration grow from (`EXTENDED`)."""
    if not _is_run_record(existing):
        raise TicketlabError(
            f"--out {str(out)!r} holds a config.json that is not a ticketlab run's (a Hugging Face model "
            "directory?); choose another --out."
        )
    new = json.loads(json.dumps(record))
    if existing == new:
        return SAME
    if existing["kind"] == new["kind"] and extends is not None and extends(existing["config"], new["config"]):
        return EXTENDED
    old, new_config = existing["config"], new["config"]
    diff = sorted(k for k in set(old) | set(new_config) if old.get(k) != new_config.get(k))
    what = ", ".join(diff) if diff else f"kind: {existing['kind']} vs {record['kind']}"
    raise TicketlabError(
        f"{str(out)!r} holds a run with a different configuration (differs in: {what}); "
        "use another --out, repeat the original command to resume it, or extend it only by more rounds, "
        "seeds, densities or methods."
    )


def check_run_directory(out: str | os.PathLike, config: Mapping[str, Any], *, kind: str,
                        extends: Extension | None = None) -> bool:
    """Read-only: would ``out`` accept this run? True if it already holds it (a resume, or a run
    this configuration extends), False if it is free; a TicketlabError (the claim's own message)
    if it would be refused."""
    return _directory_state(Path(out), {"kind": kind, "config": dict(config)}, extends) != FREE


def claim_run_directory(out: str | os.PathLike, config: Mapping[str, Any], *, kind: str,
                        extends: Extension | None = None) -> tuple[Path, RunLock]:
    """Create ``out`` for a new run, or check that it holds a run with the same configuration.

    ``config`` is the resolved, JSON-serialisable configuration; it is stored as ``config.json``
    together with ``kind`` (e.g. ``"imp"``). The check and the write happen under the run lock,
    which the caller holds (the returned `RunLock`) until the run ends; temporary files left by a
    killed run are removed first. Raises TicketlabError when ``out`` is a file, a non-empty
    directory that is not a ticketlab run, a run of another configuration, or in use by another
    process. A run that ``extends`` allows to grow into ``config`` gets the new ``config.json``.

    The directory is checked once before the lock, so a refused run leaves it untouched (no lock
    file, no leftovers removed: it may not even be ticketlab's), and once under the lock, where
    the answer counts (another process may have claimed it in between).
    """
    out = Path(out)
    record = {"kind": kind, "config": dict(config)}
    _directory_state(out, record, extends)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out)
    except OSError as err:
        raise TicketlabError(f"Cannot create the run directory {str(out)!r} ({err.strerror or err}).") from None
    try:
        remove_leftovers(out, skip=_nested_run)
        if _directory_state(out, record, extends) != SAME:
            write_json(out / "config.json", record)
    except BaseException:
        lock.release()
        raise
    return out, lock
