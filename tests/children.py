"""Child processes for the tests, forked from one server that has imported torch and ticketlab.

A test that must run ticketlab in another process — killed at a write, racing a second process,
under a resource limit — used to start a fresh interpreter every time and pay torch's import
(about 1.5 s on 2 cores) for each child. Here children fork from a `multiprocessing` forkserver
that imported those modules once: a child starts in milliseconds, yet is a real separate process
(its own PID, its own file locks, killable with SIGKILL), and its exit code, stdout and stderr
come back as from `subprocess.run`. The server itself never runs a torch computation, so every
child's thread pools start fresh (forking after a parallel region is what would be unsafe).

The function a child runs must be importable by name (a module-level function); its return value
is the exit code. A child killed by a signal reports ``-signal`` (SIGKILL: -9), as subprocess does.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["torch", "ticketlab.cli", "run_harness"])


@dataclass
class Completed:
    """What a finished child left: its exit code (``-N`` when killed by signal N) and its output."""

    returncode: int
    stdout: str
    stderr: str


def _enter(function: Callable[..., Any], args: tuple, stdout: str, stderr: str, env: Mapping[str, str]) -> None:
    """The child: its stdout and stderr into files, ``env`` over its environment (threads as asked),
    ``function(*args)``, and an exit with its result (never the parent's cleanup: ``os._exit``)."""
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    os.environ.update(env)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    code: Any = 1
    try:
        code = function(*args)
    except SystemExit as exit_:
        code = exit_.code
    except BaseException:   # noqa: BLE001 - a child reports everything, as an interpreter would
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


class Child:
    """One running child (`start`): ``pid``, ``poll()``, ``wait(timeout)`` -> `Completed`."""

    def __init__(self, function: Callable[..., Any], args: Sequence[Any], env: Mapping[str, str] | None):
        self._files = [tempfile.NamedTemporaryFile("w+", suffix=suffix, delete=False) for suffix in (".out", ".err")]
        self._process = _CONTEXT.Process(target=_enter, args=(function, tuple(args), self._files[0].name,
                                                              self._files[1].name, dict(env or {})))
        self._process.start()
        self.pid = self._process.pid
        self.result: Completed | None = None

    def poll(self) -> int | None:
        """The exit code if the child has ended, else None."""
        return self._process.exitcode

    def wait(self, timeout: float = 180) -> Completed:
        """Wait for the child (killed, and a failed test, after ``timeout`` seconds) and collect it."""
        if self.result is not None:
            return self.result
        self._process.join(timeout)
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join()
            raise TimeoutError(f"the child {self.pid} ran past {timeout} s")
        outputs = []
        for handle in self._files:
            handle.close()
            outputs.append(Path(handle.name).read_text(errors="replace"))
            os.unlink(handle.name)
        self.result = Completed(self._process.exitcode, *outputs)
        return self.result


def start(function: Callable[..., Any], *args: Any, env: Mapping[str, str] | None = None) -> Child:
    """Start ``function(*args)`` in a forked child (see the module docstring)."""
    return Child(function, args, env)


def run(function: Callable[..., Any], *args: Any, env: Mapping[str, str] | None = None,
        timeout: float = 180) -> Completed:
    """``function(*args)`` in a forked child, to its end."""
    return start(function, *args, env=env).wait(timeout)


# --- what the tests run in children ---------------------------------------------------------------------
def cli(argv: Sequence[str]) -> int:
    """``ticketlab ARGV``."""
    from ticketlab.cli import main

    return main(list(argv))


def cli_with_file_limit(limit: int, argv: Sequence[str]) -> int:
    """``ticketlab ARGV`` whose files cannot grow beyond ``limit`` bytes (a full disk: a write past
    the limit fails with EFBIG, SIGXFSZ ignored)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return cli(argv)


def cli_killed_at(point: str, argv: Sequence[str]) -> int:
    """``ticketlab ARGV`` that SIGKILLs itself at a `run_harness` kill point (``WHAT:NAME:N``)."""
    import run_harness

    run_harness.install_kill(point)
    return cli(argv)


def harness(argv: Sequence[str]) -> int:
    """`run_harness.main`: a tiny experiment, optionally killed at a write or held."""
    import run_harness

    return run_harness.main(list(argv))


__all__ = ["Child", "Completed", "cli", "cli_killed_at", "cli_with_file_limit", "harness", "run", "start"]
