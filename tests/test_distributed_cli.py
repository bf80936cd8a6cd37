"""The experiment commands under torchrun: 2 CPU processes (gloo) run `ticketlab imp`,
`prune-init` and `sparse-train`; rank 0 writes --out, rank 1 its replica in --out/.rank-1, and the
two end with identical masks and bit-identical weights."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ticketlab.masks import Mask

from torchrun_launch import torchrun_sequence  # noqa: E402

TIMEOUT_S = 180
COMMON = ["--data", "digits", "--steps", "12it", "--batch-size", "60", "--eval-every", "6it", "--quiet",
          "--device", "cpu"]
COMMANDS = {
    "imp": ["imp", "--rounds", "1", "--rate", "0.5", "--controls", "reinit", "--rewind", "3it"],
    "snip": ["prune-init", "--method", "snip", "--density", "0.1", "--score-batch-size", "60"],
    "rigl": ["sparse-train", "--method", "rigl", "--density", "0.1", "--update-every", "2it"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Every command of `COMMANDS` on 2 ranks, in one torchrun job (`torchrun_sequence`): ``ROOT/NAME``."""
    root = tmp_path_factory.mktemp("torchrun")
    commands = [[*argv, *COMMON, "--out", str(root / name)] for name, argv in COMMANDS.items()]
    codes, output = torchrun_sequence(commands, root / "plan.json", TIMEOUT_S)
    assert codes == [[0] * len(COMMANDS)] * 2, output[-4000:]
    return root


@pytest.mark.parametrize("name", list(COMMANDS))
def test_ranks_write_identical_runs(runs, name):
    out = runs / name
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
