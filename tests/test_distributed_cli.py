"""The experiment commands under torchrun: 2 CPU processes (gloo) run `ticketlab imp`,
`prune-init` and `sparse-train`; rank 0 writes --out, rank 1 its replica in --out/.rank-1, and the
two end with identical masks and bit-identical weights."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ticketlab.masks import Mask

from torchrun_launch import torchrun_ticketlab  # noqa: E402

TIMEOUT_S = 180
COMMON = ["--data", "digits", "--steps", "12it", "--batch-size", "60", "--eval-every", "6it", "--quiet",
          "--device", "cpu"]
COMMANDS = {
    "imp": ["imp", "--rounds", "1", "--rate", "0.5", "--controls", "reinit", "--rewind", "3it"],
    "snip": ["prune-init", "--method", "snip", "--density", "0.1", "--score-batch-size", "60"],
    "rigl": ["sparse-train", "--method", "rigl", "--density", "0.1", "--update-every", "2it"],
}


def _torchrun(out: Path, argv: list[str]) -> None:
    torchrun_ticketlab([*argv, *COMMON, "--out", str(out)], TIMEOUT_S)


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
