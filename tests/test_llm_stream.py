"""Pruning while streaming weights from the shards: the same result as in memory, bit for bit, and a
model larger than the process's memory limit pruned under that limit."""

from __future__ import annotations

import json
import os
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
    from ticketlab.masks import Mask

    assert Mask.load(tmp_path / "stream" / "masks.safetensors") == Mask.load(tmp_path / "memory" / "masks.safetensors")
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


MEMORY_LIMIT = 560 * 2**20   # private memory (RLIMIT_DATA) of the pruning process
LIMITED_RUNNER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_DATA, (int(sys.argv[1]), int(sys.argv[1])))
from ticketlab.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _write_big_llama(directory: Path, tokenizer) -> int:
    """A LLaMA-shaped model of ~0.8 GB written shard by shard (never whole in memory); returns its bytes."""
    from safetensors.torch import save_file

    config = transformers.LlamaConfig(vocab_size=512, hidden_size=1024, intermediate_size=4096, num_hidden_layers=12,
                                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=64)
    with torch.device("meta"):
        shapes = {n: tuple(t.shape) for n, t in transformers.LlamaForCausalLM(config).state_dict().items()}
    directory.mkdir(parents=True)
    config.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    generator = torch.Generator().manual_seed(0)
    drawn: dict[tuple[int, ...], torch.Tensor] = {}   # one draw per shape: the 15 blocks share theirs (fast to write)
    weight_map, shard, size, index = {}, {}, 0, 0

    def flush():
        nonlocal shard, size, index
        name = f"model-{index + 1:05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update({n: name for n in shard})
        shard, size, index = {}, 0, index + 1

    for name, shape in shapes.items():
        if shape not in drawn:
            drawn[shape] = torch.randn(shape, generator=generator) * 0.02
        value = torch.ones(shape) if name.endswith("norm.weight") else drawn[shape].clone()
        shard[name] = value
        size += value.numel() * 4
        if size > 200 * 2**20:
            flush()
    if shard:
        flush()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sum(p.stat().st_size for p in directory.glob("model-*.safetensors"))


@pytest.mark.slow
def test_a_model_larger_than_the_memory_limit_is_pruned_under_it(llm_assets, tmp_path, capsys):
    model = tmp_path / "big"
    model_bytes = _write_big_llama(model, llm_assets.tokenizer)
    assert model_bytes > 1.3 * MEMORY_LIMIT
    argv = ["llm", "prune", "--model", str(model), "--method", "wanda", "--sparsity", "0.5",
            "--calib", str(llm_assets.text_path), "--nsamples", "2", "--seqlen", "32", "--calib-batch-size", "2",
            "--device", "cpu", "--quiet", "--threads", "1"]   # the same threads in both paths
    limited = subprocess.run([sys.executable, "-c", LIMITED_RUNNER, str(MEMORY_LIMIT), *argv, "--stream",
                              "--out", str(tmp_path / "stream")], capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))  # the same threads as this process
    assert limited.returncode == 0, limited.stderr[-3000:]
    record = json.loads((tmp_path / "stream" / "pruning_report.json").read_text())
    assert record["streaming"]["model_bytes"] == model_bytes
    streaming = record["streaming"]
    assert streaming["peak_rss_bytes"] < model_bytes
    # above what the process held before the first block (interpreter, torch, transformers, tokenizer,
    # embedding and head), pruning adds about two blocks: the block, its temporaries (measured 1.9)
    block = streaming["largest_block_bytes"]
    assert block == 4 * (4 * 1024 * 1024 + 3 * 4096 * 1024 + 2 * 1024)      # 7 linear layers, 2 norms
    if streaming["rss_before_blocks_bytes"] is not None:
        assert streaming["peak_rss_bytes"] - streaming["rss_before_blocks_bytes"] < 3 * block
    # what was written is the pruned model: every target at 50%, the rest as stored (bit-for-bit equality
    # with the in-memory path is `test_streaming_equals_the_in_memory_path_bit_for_bit`, on a smaller model)
    stream, original = _tensors(tmp_path / "stream"), _tensors(model)
    assert set(stream) == set(original)
    for name, value in stream.items():
        if name.endswith("proj.weight"):
            assert int((value == 0).sum()) == value.numel() // 2, name
        else:
            assert torch.equal(value, original[name]), name


def test_a_memory_limit_below_two_blocks_is_one_sentence(sharded_llama, llm_assets, tmp_path, monkeypatch, capsys):
    import ticketlab.llm.stream as stream

    monkeypatch.setattr(stream, "memory_limit_bytes", lambda: 1000)
    code = main(["llm", "prune", "--model", str(sharded_llama), "--method", "wanda", "--sparsity", "0.5", "--stream",
                 "--calib", str(llm_assets.text_path), "--nsamples", "2", "--seqlen", "16", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "room for about two blocks" in err
    assert not (tmp_path / "o").exists()


def test_a_dtype_the_device_cannot_run_is_one_sentence(monkeypatch):
    from ticketlab.llm import run

    def refuse(*args, **kwargs):
        raise RuntimeError('"LayerNormKernelImpl" not implemented for Half')

    monkeypatch.setattr(torch.nn.functional, "layer_norm", refuse)
    with pytest.raises(TicketlabError, match="cannot compute in float16"):
        run.check_dtype(torch.float16, torch.device("cpu"))


def test_more_ranks_than_layers_is_refused():
    from ticketlab.llm.ranks import RankGroup

    with pytest.raises(TicketlabError, match="use fewer processes"):
        RankGroup(rank=0, world=4).owners([["a", "b"], ["c"]])
    assert RankGroup(rank=1, world=2).owners([["q", "k", "v"], ["o"]]) == {"q": 0, "k": 0, "v": 0, "o": 1}
    assert RankGroup(rank=0, world=3).samples(7) == slice(0, 2)


def test_packed_masks_spill_to_disk_and_save_like_a_mask(tmp_path):
    """Masks kept packed in a scratch file (nothing but offsets in memory) are written byte for byte
    as `Mask.save` writes them, and the scratch file is gone afterwards."""
    from ticketlab.llm.packed_masks import PackedMasks
    from ticketlab.masks import Mask

    g = torch.Generator().manual_seed(3)
    tensors = {"b.weight": torch.rand(7, 13, generator=g) < 0.4, "a.weight": torch.rand(5, 3, generator=g) < 0.6,
               "c.weight": torch.ones(9, dtype=torch.bool)}
    packed = PackedMasks(tmp_path / ".spill")
    for name, keep in tensors.items():
        packed.add(name, keep)
    assert (tmp_path / ".spill").stat().st_size == sum((t.numel() + 7) // 8 for t in tensors.values())
    assert all(torch.equal(packed.flags(n), t) for n, t in tensors.items())
    mask = Mask(tensors)
    assert (packed.num_kept(), packed.num_total()) == (mask.num_kept(), mask.num_total())
    packed.save(tmp_path / "packed.safetensors", metadata={"method": "wanda"})
    mask.save(tmp_path / "mask.safetensors", metadata={"method": "wanda"})
    assert (tmp_path / "packed.safetensors").read_bytes() == (tmp_path / "mask.safetensors").read_bytes()
    assert not (tmp_path / ".spill").exists()
