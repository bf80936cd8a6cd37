"""One-shot pruning under torchrun: 2 gloo processes (nccl with 2 GPUs) split the calibration samples and the layers,
end with identical weights, and match a single process up to float summation order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ticketlab.cli import main  # noqa: E402

from llm_assets import llm_assets  # noqa: E402,F401

from torchrun_launch import torchrun_ticketlab  # noqa: E402

TIMEOUT_S = 240


def _torchrun(argv: list[str]) -> str:
    return torchrun_ticketlab(argv, TIMEOUT_S)


TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl needs one GPU per rank")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=TWO_GPUS)])   # gloo / nccl
@pytest.mark.parametrize("method", [["--method", "sparsegpt", "--sparsity", "0.5"], ["--method", "wanda", "--pattern", "2:4"]])
def test_two_processes_prune_like_one(llm_assets, tmp_path, capsys, method, device):
    common = ["llm", "prune", "--model", str(llm_assets.llama_dir), *method, "--calib", str(llm_assets.text_path),
              "--nsamples", "6", "--seqlen", "16", "--calib-batch-size", "2", "--device", device, "--quiet"]
    output = _torchrun([*common, "--out", str(tmp_path / "two")])
    assert output.count("saved ") == 1          # rank 0 alone writes and prints
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    record = json.loads((tmp_path / "two" / "pruning_report.json").read_text())
    checksums = record["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert record["extra"]["processes"] == 2
    from safetensors.torch import load_file

    two, one = load_file(str(tmp_path / "two" / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    for name in one:
        assert torch.allclose(two[name], one[name], rtol=1e-4, atol=1e-5), name
    flips = sum(int(((two[n] == 0) != (one[n] == 0)).sum()) for n in one)
    assert flips <= 1e-3 * sum(t.numel() for t in one.values())


def test_more_processes_than_samples_is_one_sentence(llm_assets, tmp_path):
    output = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ticketlab",
         "llm", "prune", "--model", str(llm_assets.llama_dir), "--method", "wanda", "--sparsity", "0.5",
         "--calib", str(llm_assets.text_path), "--nsamples", "1", "--seqlen", "16", "--device", "cpu", "--quiet",
         "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=TIMEOUT_S,
        env={k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")})
    assert output.returncode != 0 and "need at least 2 calibration samples" in output.stdout + output.stderr
    assert not (tmp_path / "x").exists()
