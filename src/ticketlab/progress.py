"""The one progress protocol of the library: the caller (the CLI, a notebook) passes an object in,
and the library never imports a progress-bar package itself.

A `Progress` is called as ``progress(description, total, initial)`` when a long piece of work
starts and returns a `Bar` (``update(n)``, ``close()``) — tqdm's own signature fits. It may also
have ``finished(event)``: called with a `Finished` each time a unit of a run (a round, a cell, a
density) is done, so a display without a terminal can print one line per unit; and
``metrics(record)``: called with every evaluation record as it is logged (e.g. to TensorBoard).
Both are optional: `announce` and `metrics_listener` look for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


class Progress(Protocol):
    def __call__(self, description: str, total: int, initial: int = 0) -> Bar: ...


@dataclass(frozen=True)
class Finished:
    """One finished unit: what it was, its result, and where the whole batch of work stands.

    ``done`` of ``total`` units are finished (``done`` includes this one); ``elapsed`` seconds
    since the batch started; ``eta`` the estimated seconds left (None until one unit finished here).
    """

    label: str
    density: float | None
    test_accuracy: float | None
    done: int
    total: int
    elapsed: float
    eta: float | None


class Silent:
    """A `Progress` that shows nothing."""

    def __call__(self, description: str, total: int, initial: int = 0) -> "Silent":
        return self

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def announce(progress: Any, event: Finished) -> None:
    """Tell ``progress`` a unit finished, if it listens (``finished``)."""
    listener = getattr(progress, "finished", None)
    if callable(listener):
        listener(event)


def metrics_listener(progress: Any) -> Callable[[Mapping[str, Any]], None] | None:
    """``progress.metrics`` if it has one (called with each evaluation record), else None."""
    listener = getattr(progress, "metrics", None)
    return listener if callable(listener) else None


__all__ = ["Bar", "Finished", "Progress", "Silent", "announce", "metrics_listener"]
