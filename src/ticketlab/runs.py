"""Run directories: resolved config, live metrics, results and checkpoints, written atomically.

Every file is written to a temporary name beside its destination and renamed into place, so a kill
at any moment leaves either the old file or the new one, never a torn one. A run directory stores
the resolved configuration in ``config.json``; reusing the directory with a different
configuration is refused, and reusing it with the same one resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import TicketlabError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TicketlabError(f"Cannot read {str(path)!r} as JSON ({err}).") from None


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def torch_load(path: str | os.PathLike) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file
        raise TicketlabError(f"Checkpoint {str(path)!r} is unreadable ({type(err).__name__}).") from None


class MetricsLog:
    """Append-only JSON-lines log of evaluations (``metrics.jsonl``), flushed after every line.

    Resuming an interrupted training segment first drops the lines it is about to write again
    (`truncate_after`), so the log of a resumed run equals that of an uninterrupted one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(dict(record), sort_keys=False) + "\n")
            handle.flush()

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write: the segment that wrote it is redone
        return out

    def truncate_after(self, key: Mapping[str, Any], iteration: int) -> None:
        """Drop records matching ``key`` whose iteration is beyond ``iteration`` (atomic rewrite)."""
        kept = [r for r in self.records()
                if not (all(r.get(k) == v for k, v in key.items()) and r.get("iteration", -1) > iteration)]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=False) + "\n" for r in kept))


def claim_run_directory(out: str | os.PathLike, config: Mapping[str, Any], *, kind: str) -> Path:
    """Create ``out`` for a new run, or check that it holds a run with the same configuration.

    ``config`` is the resolved, JSON-serialisable configuration; it is stored as ``config.json``
    together with ``kind`` (e.g. ``"imp"``). Raises TicketlabError when ``out`` is a file, a
    non-empty directory that is not a ticketlab run, or a run of another configuration.
    """
    out = Path(out)
    record = {"kind": kind, "config": dict(config)}
    if out.exists() and not out.is_dir():
        raise TicketlabError(f"--out {str(out)!r} is a file, not a directory.")
    config_path = out / "config.json"
    if config_path.exists():
        existing = read_json(config_path)
        if existing != json.loads(json.dumps(record)):
            old = existing.get("config", {}) if isinstance(existing, dict) else {}
            diff = sorted(k for k in set(old) | set(record["config"]) if old.get(k) != record["config"].get(k))
            what = ", ".join(diff) if diff else "kind"
            raise TicketlabError(
                f"{str(out)!r} holds a run with a different configuration (differs in: {what}); "
                "use another --out or repeat the original command to resume it."
            )
        return out
    if out.is_dir() and any(out.iterdir()):
        raise TicketlabError(f"--out {str(out)!r} is a non-empty directory that holds no ticketlab run.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(config_path, record)
    except OSError as err:
        raise TicketlabError(f"Cannot create the run directory {str(out)!r} ({err.strerror or err}).") from None
    return out
