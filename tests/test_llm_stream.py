"""Pruning while streaming weights from the shards: the same result as in memory, bit for bit, and a
model larger than the process's memory limit pruned under that limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ticketlab.cli import main  # noqa: E402
from ticketlab.errors import TicketlabError  # noqa: E402
from ticketlab.llm.stream import ShardIndex  # noqa: E402

from llm_assets import llm_assets  # noqa: E402,F401


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for path in sorted(directory.glob("model*.safetensors")):
        out.update(load_file(str(path)))
    return out


def _prune(model: Path, out: Path, text: Path, *extra: str) -> None:
    argv = ["llm", "prune", "--model", str(model), "--calib", str(text), "--nsamples", "4", "--seqlen", "16",
            "--calib-batch-size", "2", "--device", "cpu", "--quiet", "--out", str(out), *extra]
    assert main(argv) == 0


@pytest.fixture(scope="module")
def sharded_llama(llm_assets, tmp_path_factory) -> Path:
    """The tiny LLaMA of llm_assets saved in several shards."""
    directory = tmp_path_factory.mktemp("sharded") / "llama"
    model = transformers.AutoModelForCausalLM.from_pretrained(str(llm_assets.llama_dir))
    model.save_pretrained(str(directory), max_shard_size="20KB")
    llm_assets.tokenizer.save_pretrained(str(directory))
    assert len(list(directory.glob("model-*.safetensors"))) > 2
    return directory


@pytest.mark.parametrize("method", [["--method", "sparsegpt", "--sparsity", "0.5"],
                                    ["--method", "wanda", "--pattern", "2:4"],
                                    ["--method", "magnitude", "--sparsity", "0.7"]])
def test_streaming_equals_the_in_memory_path_bit_for_bit(sharded_llama, llm_assets, tmp_path, capsys, method):
    _prune(sharded_llama, tmp_path / "memory", llm_assets.text_path, *method)
    _prune(sharded_llama, tmp_path / "stream", llm_assets.text_path, *method, "--stream")
    capsys.readouterr()
    memory, stream = _tensors(tmp_path / "memory"), _tensors(tmp_path / "stream")
    assert set(memory) == set(stream)
    for name, value in memory.items():
        assert torch.equal(value.view(torch.uint8) if value.is_floating_point() else value,
                           stream[name].view(torch.uint8) if value.is_floating_point() else stream[name]), name
    record = json.loads((tmp_path / "stream" / "pruning_report.json").read_text())
    assert record["streaming"]["model_bytes"] > 0 and record["streaming"]["peak_rss_bytes"] > 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "stream"))
    assert type(reloaded).__name__ == "LlamaForCausalLM"


def test_a_missing_shard_is_one_sentence(sharded_llama, llm_assets, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in sharded_llama.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    next(iter(sorted(broken.glob("model-*.safetensors")))).unlink()
    code = main(["llm", "prune", "--model", str(broken), "--method", "wanda", "--sparsity", "0.5", "--stream",
                 "--calib", str(llm_assets.text_path), "--nsamples", "2", "--seqlen", "16", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "lacks the shard" in err
    assert not (tmp_path / "o").exists()


def test_streaming_refuses_what_needs_the_whole_model(sharded_llama, llm_assets, tmp_path, capsys):
    base = ["llm", "prune", "--model", str(sharded_llama), "--method", "wanda", "--sparsity", "0.5", "--stream",
            "--calib", str(llm_assets.text_path), "--out", str(tmp_path / "o")]
    assert main([*base, "--eval-text", str(llm_assets.text_path)]) == 2
    assert "whole model" in capsys.readouterr().err
    assert main([*base, "--layer-sparsity", "owl"]) == 2
    assert "--stream" in capsys.readouterr().err


def test_a_truncated_shard_header_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(TicketlabError, match="as safetensors"):
        ShardIndex(tmp_path)
