"""The experiment commands under torchrun: 2 CPU processes (gloo) run `ticketlab imp`,
`prune-init` and `sparse-train`; rank 0 writes --out, rank 1 its replica in --out/.rank-1, and the
two end with identical masks and bit-identical weights."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ticketlab.masks import Mask

TIMEOUT_S = 180
COMMON = ["--data", "digits", "--steps", "12it", "--batch-size", "60", "--eval-every", "6it", "--quiet",
          "--device", "cpu"]
COMMANDS = {
    "imp": ["imp", "--rounds", "1", "--rate", "0.5", "--controls", "reinit", "--rewind", "3it"],
    "snip": ["prune-init", "--method", "snip", "--density", "0.1", "--score-batch-size", "60"],
    "rigl": ["sparse-train", "--method", "rigl", "--density", "0.1", "--update-every", "2it"],
}


def _torchrun(out: Path, argv: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", "0", "-m", "ticketlab", *argv, *COMMON, "--out", str(out)]
    failures = []
    for _attempt in range(2):  # one retry: a rendezvous port can be taken at the wrong moment
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            failures.append(f"torchrun did not finish within {TIMEOUT_S} s (killed); output:\n{output[-4000:]}")
            continue
        if proc.returncode == 0:
            return
        failures.append(f"torchrun failed (exit {proc.returncode}); output:\n{output[-4000:]}")
    pytest.fail("\n--- retry ---\n".join(failures))


@pytest.mark.parametrize("name", list(COMMANDS))
def test_ranks_write_identical_runs(tmp_path, name):
    out = tmp_path / name
    _torchrun(out, COMMANDS[name])
    replica = out / ".rank-1"
    assert (out / "summary.json").exists() and (replica / "summary.json").exists()
    masks = sorted(p.relative_to(out) for p in out.rglob("*mask.safetensors") if ".rank-1" not in p.parts)
    weights = sorted(p.relative_to(out) for p in out.rglob("weights.safetensors") if ".rank-1" not in p.parts)
    assert masks and weights
    for rel in masks:
        assert Mask.load(out / rel) == Mask.load(replica / rel), rel
    for rel in weights:
        a, b = load_file(str(out / rel)), load_file(str(replica / rel))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
