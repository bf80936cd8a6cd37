"""Run a small experiment in a child process, optionally killed (SIGKILL) at a chosen write.

Used by the tests as ``python run_harness.py KIND OUT [--kill POINT] [--hold DIR]``, or `main` in a
forked child (`children.harness`):

* ``KIND`` is one of `EXPERIMENTS` (tiny configs on generated data, seconds each);
* ``--kill WHAT:NAME:N`` kills the process at the N-th event WHAT on a file called NAME (a shell
  pattern such as ``.out.*.tmp`` matches our temporary names):
  ``before-replace`` (the new content is fully written under a temporary name, not renamed yet),
  ``after-replace`` (renamed into place), ``torn-append`` (half of a metrics line written),
  ``after-append`` (a whole metrics line written), ``after-unlink`` (the file was deleted),
  ``after-mkdir`` (a directory was created, still empty);
* ``--hold DIR`` makes the process write ``DIR/claimed`` once it holds the run directory, then
  wait for ``DIR/go`` before doing the work (to test two processes on one directory).

A kill is ``os.kill(getpid(), SIGKILL)``: no ``finally`` block, no atexit handler runs, exactly like
``kill -9``.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from conftest import make_splits  # noqa: E402
from ticketlab.experiments.compare import CompareConfig, CompareExperiment  # noqa: E402
from ticketlab.experiments.sparse import SparseConfig, SparseExperiment  # noqa: E402
from ticketlab.lottery import IMPConfig, IMPExperiment  # noqa: E402
from ticketlab.train import TrainConfig  # noqa: E402

TRAIN = TrainConfig(steps="12it", batch_size=40, eval_every="4it", lr=5e-3)
COMMON = dict(model="lenet300", data="toy", seeds=(0,), train=TRAIN)

EXPERIMENTS = {
    "imp": (IMPExperiment, IMPConfig(rounds=1, rate=0.5, controls=("reinit",), **COMMON)),
    "imp-lr2": (IMPExperiment, IMPConfig(rounds=1, rate=0.5, controls=("reinit",),
                                         **{**COMMON, "train": TrainConfig(steps="12it", batch_size=40,
                                                                           eval_every="4it", lr=2e-3)})),
    "prune-init": (SparseExperiment, SparseConfig(kind="prune-init", method="snip", densities=(0.2,),
                                                  controls=("shuffle",), score_batch_size=40, **COMMON)),
    "sparse-train": (SparseExperiment, SparseConfig(kind="sparse-train", method="set", densities=(0.2,), scope="layer",
                                                    update_every="2it", controls=("static",), **COMMON)),
    "compare": (CompareExperiment, CompareConfig(methods=("imp", "random"), densities=(0.5,), **COMMON)),
}


def install_kill(point: str) -> None:
    """Make this process SIGKILL itself at the kill point ``WHAT:NAME:N`` (see the module docstring)."""
    what, name, nth = point.split(":")
    nth = int(nth)
    seen = {"n": 0}

    def hit(path) -> bool:
        if not fnmatch.fnmatchcase(Path(path).name, name):
            return False
        seen["n"] += 1
        return seen["n"] == nth

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if what in ("before-replace", "after-replace"):
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if what == "before-replace" and hit(dst):
                die()
            real_replace(src, dst, *args, **kwargs)
            if what == "after-replace" and hit(dst):
                die()

        os.replace = replace
    elif what in ("torn-append", "after-append"):
        from ticketlab.runs import MetricsLog

        real_append = MetricsLog.append

        def append(self, record):
            if not hit(self.path):
                return real_append(self, record)
            if what == "after-append":
                real_append(self, record)
            else:
                import json

                with self.path.open("a") as handle:
                    line = json.dumps(dict(record)) + "\n"
                    handle.write(line[: len(line) // 2])
            die()

        MetricsLog.append = append
    elif what == "after-unlink":
        real_unlink = Path.unlink

        def unlink(self, *args, **kwargs):
            real_unlink(self, *args, **kwargs)
            if hit(self):
                die()

        Path.unlink = unlink
    elif what == "after-mkdir":
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            real_mkdir(path, *args, **kwargs)
            if hit(path):
                die()

        os.mkdir = mkdir
    else:
        raise SystemExit(f"unknown kill event {what!r}")


def run(kind: str, out: Path, hold: Path | None = None):
    """Run experiment ``kind`` into ``out`` in this process (the resumed or reference run).

    With ``hold``, write ``hold/claimed`` once ``out`` is claimed, then wait for ``hold/go``.
    """
    cls, config = EXPERIMENTS[kind]
    experiment = cls.prepare(config, out, data=make_splits())
    if hold is not None:
        (hold / "claimed").write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not (hold / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return experiment.run()


def main(argv: list[str]) -> int:
    """``KIND OUT [--kill POINT] [--hold DIR]`` (see the module docstring); the exit code."""
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(EXPERIMENTS))
    parser.add_argument("out")
    parser.add_argument("--kill", default=None)
    parser.add_argument("--hold", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.kill:
        install_kill(args.kill)
    from ticketlab.errors import TicketlabError

    try:
        run(args.kind, Path(args.out), Path(args.hold) if args.hold else None)
    except TicketlabError as err:
        print(f"refused: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
