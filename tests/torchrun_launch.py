"""Launch a sequence of ``ticketlab`` commands under torchrun with 2 local processes, for the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def torchrun_sequence(commands: list[list[str]], plan: Path, timeout_s: float) -> tuple[list[list[int]], str]:
    """Run every ``ticketlab`` command of ``commands`` in order on 2 ranks of one torchrun job
    (`torchrun_sequence.py`; ``plan`` is where the list is written); returns each rank's exit
    codes and the job's output."""
    plan.write_text(json.dumps(commands))
    output = _torchrun([str(Path(__file__).parent / "torchrun_sequence.py"), str(plan)], timeout_s)
    codes = [json.loads(Path(f"{plan}.rank-{rank}").read_text()) for rank in (0, 1)]
    return codes, output


def _torchrun(target: list[str], timeout_s: float) -> str:
    """``torchrun --nproc_per_node 2 TARGET``: one retry, because a rendezvous port can be taken at
    the wrong moment; a timeout kills the whole process group. Fails the test with both attempts'
    output tails."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", "0", *target]
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
