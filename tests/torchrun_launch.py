"""Launch ``python -m ticketlab ARGS`` under torchrun with 2 local processes, for the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def torchrun_ticketlab(argv: list[str], timeout_s: float) -> str:
    """Run ``ticketlab *argv`` on 2 ranks (gloo over loopback, one thread each); return its output.

    One retry, because a rendezvous port can be taken at the wrong moment; a timeout kills the
    whole process group. Fails the test with both attempts' output tails.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", "0", "-m", "ticketlab", *argv]
    failures = []
    for _attempt in range(2):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            failures.append(f"torchrun did not finish within {timeout_s} s (killed); output:\n{output[-4000:]}")
            continue
        if proc.returncode == 0:
            return output
        failures.append(f"torchrun failed (exit {proc.returncode}); output:\n{output[-4000:]}")
    pytest.fail("\n--- retry ---\n".join(failures))
