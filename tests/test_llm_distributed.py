"""One-shot pruning under torchrun: 2 gloo processes (nccl with 2 GPUs) split the calibration samples and the layers,
end with identical weights, and match a single process up to float summation order."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ticketlab.cli import main  # noqa: E402

from llm_assets import llm_assets  # noqa: E402,F401

from torchrun_launch import torchrun_sequence  # noqa: E402

TIMEOUT_S = 240


TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl needs one GPU per rank")


METHODS = {"sparsegpt": ["--method", "sparsegpt", "--sparsity", "0.5"], "wanda-2:4": ["--method", "wanda", "--pattern", "2:4"],
           "structured": ["--method", "wanda", "--sparsity", "0.5", "--granularity", "channel+head"]}


def _common(assets, device: str) -> list[str]:
    return ["llm", "prune", "--model", str(assets.llama_dir), "--calib", str(assets.text_path), "--nsamples", "6",
            "--seqlen", "16", "--calib-batch-size", "2", "--device", device, "--quiet"]


def _job(assets, root, device: str) -> tuple[list[list[int]], str]:
    """Every method of `METHODS` on 2 ranks, then a command with fewer samples than ranks, in one
    torchrun job (`torchrun_sequence`): ``root/<method>``, ``root/too-few``."""
    commands = [[*_common(assets, device), *argv, "--out", str(root / name)] for name, argv in METHODS.items()]
    too_few = ["llm", "prune", "--model", str(assets.llama_dir), "--method", "wanda", "--sparsity", "0.5", "--calib",
               str(assets.text_path), "--nsamples", "1", "--seqlen", "16", "--device", device, "--quiet",
               "--out", str(root / "too-few")]
    return torchrun_sequence([*commands, too_few], root / "plan.json", TIMEOUT_S)


@pytest.fixture(scope="module")
def cpu_job(llm_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-ranks")
    return root, *_job(llm_assets, root, "cpu")


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_prune_like_one(llm_assets, cpu_job, tmp_path, capsys, method):
    root, codes, output = cpu_job
    _compare_with_one_process(llm_assets, root, codes, output, tmp_path, capsys, method, "cpu")


@TWO_GPUS
@pytest.mark.parametrize("method", list(METHODS))
def test_two_gpu_processes_prune_like_one(llm_assets, tmp_path_factory, tmp_path, capsys, method):   # nccl
    root = tmp_path_factory.mktemp("llm-ranks-cuda")
    codes, output = _job(llm_assets, root, "cuda")
    _compare_with_one_process(llm_assets, root, codes, output, tmp_path, capsys, method, "cuda")


def _compare_with_one_process(assets, root, codes, output, tmp_path, capsys, method, device) -> None:
    index = list(METHODS).index(method)
    assert codes[0][index] == codes[1][index] == 0, output[-4000:]
    assert output.count(f"saved {root / method} ") == 1          # rank 0 alone writes and prints
    assert main([*_common(assets, device), *METHODS[method], "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    record = json.loads((root / method / "pruning_report.json").read_text())
    checksums = record["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert record["extra"]["processes"] == 2
    from safetensors.torch import load_file

    two, one = load_file(str(root / method / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    for name in one:
        assert torch.allclose(two[name], one[name], rtol=1e-4, atol=1e-5), name
    flips = sum(int(((two[n] == 0) != (one[n] == 0)).sum()) for n in one)
    assert flips <= 1e-3 * sum(t.numel() for t in one.values())


def test_more_processes_than_samples_is_one_sentence(cpu_job):
    root, codes, output = cpu_job
    assert codes[0][-1] == codes[1][-1] == 2 and "need at least 2 calibration samples" in output
    assert not (root / "too-few").exists()
