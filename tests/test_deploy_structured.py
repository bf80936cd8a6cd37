"""Export formats of one compacted module and the structured bench (issue 19, "Export and speed"):
ONNX programs equal to the masked model under onnxruntime (a channel ticket, a structurally pruned
tiny LLaMA with blocks of different widths), a torch.export round trip, a compacted LLaMA that
plain transformers reloads, per-block widths rebuilt by ticketlab.deploy.load, bench's dense vs
compacted fields, and every refusal as one sentence with nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ticketlab.cli import main
from ticketlab.deploy import load
from ticketlab.deploy.export import build_vision_model, example_batch
from ticketlab.deploy.programs import ONNX_TOLERANCE, relative_difference
from ticketlab.deploy.sources import resolve_source

from conftest import requires
from llm_assets import llm_assets  # noqa: F401

needs_onnx = requires("onnx", "onnxscript", "onnxruntime")
needs_transformers = requires("transformers")


# --- fixtures: a channel ticket of Conv-2, a tiny LLaMA pruned by whole heads and channels ------------
@pytest.fixture(scope="module")
def channel_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("structured") / "run"
    assert main(["imp", "--data", "digits", "--model", "conv2", "--granularity", "channel", "--rounds", "1",
                 "--rate", "0.7", "--steps", "3it", "--quiet", "--controls", "none", "--out", str(out)]) == 0
    return out


def _prune(assets, out: Path, *extra: str) -> Path:
    assert main(["llm", "prune", "--model", str(assets.llama_dir), "--method", "wanda", "--calib",
                 str(assets.text_path), "--nsamples", "4", "--seqlen", "16", "--calib-batch-size", "2",
                 "--device", "cpu", "--quiet", "--sparsity", "0.5", "--granularity", "channel+head",
                 "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def uniform_llama(llm_assets, tmp_path_factory) -> Path:  # noqa: F811
    """Every block keeps half its heads and MLP channels: one config describes the result."""
    return _prune(llm_assets, tmp_path_factory.mktemp("uniform") / "llama")


@pytest.fixture(scope="module")
def owl_llama(llm_assets, tmp_path_factory) -> Path:  # noqa: F811
    """OWL's per-block sparsities: the blocks keep different MLP widths (37 and 27 of 64)."""
    return _prune(llm_assets, tmp_path_factory.mktemp("owl") / "llama", "--layer-sparsity", "owl")


def _vision_reference(unit: Path):
    source = resolve_source(unit)
    model = build_vision_model(source.spec)
    model.load_state_dict(source.state)
    return source, model.eval()


def _llama_reference(directory: Path):
    from ticketlab.llm.io import load_pretrained

    return load_pretrained(directory).model


def _ids(vocab: int, shape=(2, 7)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(5))


def _close(reference: torch.Tensor, other: torch.Tensor, tolerance: float = 1e-5) -> bool:
    return reference.shape == other.shape and relative_difference(reference, other) <= tolerance


def _refused(argv: list[str], fragment: str, capsys, out: Path) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return err


def _ort_outputs(path: Path, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feeds.items()})[0])


# --- onnx --------------------------------------------------------------------------------------------
@needs_onnx
def test_onnx_of_a_channel_ticket_runs_the_compacted_network_as_the_masked_one(channel_run, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", str(channel_run), "--round", "1", "--format", "onnx", "--out", str(out)]) == 0
    assert "model.onnx:" in capsys.readouterr().out
    record = json.loads((out / "ticketlab.json").read_text())
    assert record["layout"] == "onnx" and record["compaction"]["widths_after"]["features.0"] == 19
    program = record["program"]
    assert program["file"] == "model.onnx" and program["inputs"]["x"]["dynamic"] == {"0": "batch"}
    assert program["check"]["max_relative_difference"] <= ONNX_TOLERANCE == program["check"]["tolerance"]
    source, reference = _vision_reference(channel_run / "seed-0" / "round-01")
    x = example_batch(source.spec, 5, seed=9)                     # a batch the check did not use
    with torch.no_grad():
        expected = reference(x)
    assert _close(expected, _ort_outputs(out / "model.onnx", {"x": x}), ONNX_TOLERANCE)
    compacted = load(out, sparse=False)                            # the same weights, for ticketlab
    assert compacted.features[0].out_channels == 19
    with torch.no_grad():
        assert _close(expected, compacted(x))


@needs_onnx
@needs_transformers
def test_onnx_of_a_llama_with_blocks_of_different_widths(owl_llama, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", str(owl_llama), "--format", "onnx", "--out", str(out)]) == 0
    capsys.readouterr()
    record = json.loads((out / "ticketlab.json").read_text())
    assert not record["compaction"]["uniform"]
    assert set(record["program"]["inputs"]["input_ids"]["dynamic"].values()) == {"batch", "sequence"}
    reference = _llama_reference(owl_llama)
    for shape in ((1, 3), (2, 13)):
        ids = _ids(reference.config.vocab_size, shape)
        with torch.no_grad():
            expected = reference(input_ids=ids).logits
        assert _close(expected, _ort_outputs(out / "model.onnx", {"input_ids": ids}), ONNX_TOLERANCE)


# --- pt ----------------------------------------------------------------------------------------------
def test_pt_writes_a_torch_export_program_that_loads_back(channel_run, tmp_path, capsys):
    out = tmp_path / "pt"
    assert main(["export", str(channel_run), "--round", "1", "--format", "pt", "--out", str(out)]) == 0
    capsys.readouterr()
    record = json.loads((out / "ticketlab.json").read_text())
    assert record["program"]["file"] == "model.pt2" and "unpickles" in record["program"]["load"]
    import hashlib

    assert hashlib.sha256((out / "model.pt2").read_bytes()).hexdigest() == record["program"]["sha256"]
    program = torch.export.load(str(out / "model.pt2")).module()   # our own file, just written
    source, reference = _vision_reference(channel_run / "seed-0" / "round-01")
    for batch in (1, 6):
        x = example_batch(source.spec, batch, seed=batch)
        with torch.no_grad():
            assert _close(reference(x), program(x))


# --- hf ----------------------------------------------------------------------------------------------
@needs_transformers
def test_hf_of_a_uniformly_pruned_llama_reloads_with_transformers_alone(uniform_llama, tmp_path, capsys):
    import transformers

    out = tmp_path / "hf"
    assert main(["export", str(uniform_llama), "--format", "hf", "--out", str(out)]) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (2, 2, 32)
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()      # no ticketlab involved
    reference = _llama_reference(uniform_llama)
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in reference.parameters())
    ids = _ids(reference.config.vocab_size)
    with torch.no_grad():
        assert _close(reference(input_ids=ids).logits, plain(input_ids=ids).logits)


# --- compact + load: blocks of different widths -------------------------------------------------------
@needs_transformers
def test_compact_export_of_per_block_widths_loads_the_smaller_model(owl_llama, tmp_path, capsys):
    out = tmp_path / "compact"
    assert main(["export", str(owl_llama), "--out", str(out)]) == 0
    capsys.readouterr()
    record = json.loads((out / "ticketlab.json").read_text())
    blocks = record["compaction"]["blocks"]
    assert blocks[0]["mlp_width"] != blocks[1]["mlp_width"] and not record["compaction"]["reloadable"]
    model = load(out, sparse=False)
    widths = [layer.mlp.down_proj.in_features for layer in model.model.layers]
    heads = [layer.self_attn.q_proj.out_features // layer.self_attn.head_dim for layer in model.model.layers]
    assert widths == [b["mlp_width"] for b in blocks] and heads == [b["heads"] for b in blocks]
    reference = _llama_reference(owl_llama)
    ids = _ids(reference.config.vocab_size)
    with torch.no_grad():
        assert _close(reference(input_ids=ids).logits, model(input_ids=ids).logits)


@needs_transformers
def test_a_crafted_kept_group_is_one_sentence(owl_llama, tmp_path):
    from ticketlab.errors import TicketlabError

    out = tmp_path / "compact"
    assert main(["export", str(owl_llama), "--out", str(out)]) == 0
    record = json.loads((out / "ticketlab.json").read_text())
    record["compaction"]["kept_groups"]["model.layers.0.mlp"][-1] = 64          # beyond the 64 channels
    (out / "ticketlab.json").write_text(json.dumps(record))
    with pytest.raises(TicketlabError, match="not distinct sorted indices below 64"):
        load(out, sparse=False)


# --- bench -------------------------------------------------------------------------------------------
def test_bench_of_a_channel_ticket_reports_dense_against_compacted(channel_run, tmp_path, capsys):
    export_dir = tmp_path / "ticket"
    assert main(["export", str(channel_run), "--round", "1", "--out", str(export_dir)]) == 0
    assert main(["bench", str(export_dir), "--batch-sizes", "1,4", "--repeats", "3", "--no-memory",
                 "--out", str(tmp_path / "bench")]) == 0
    out = capsys.readouterr().out
    structured = json.loads((tmp_path / "bench" / "bench.json").read_text())["structured"]
    assert structured["kind"] == "vision" and 0 < structured["macs"]["ratio"] < 0.2
    rows = structured["torch"] + structured["torch_channels_last"] + (structured["onnxruntime"] or [])
    assert [r["batch"] for r in structured["torch"]] == [r["batch"] for r in structured["torch_channels_last"]] == [1, 4]
    fields = {"batch", "dense_ms", "compacted_ms", "speedup", "macs_removed", "time_saved",
              "time_saved_over_macs_removed"}
    assert all(fields <= set(r) and r["dense_ms"] > 0 and r["compacted_ms"] > 0 for r in rows)
    assert all(r["macs_removed"] == pytest.approx(1 - structured["macs"]["ratio"]) for r in rows)
    if structured["onnxruntime"] is None:
        assert "not installed" in structured["onnxruntime_skipped"]
    else:
        assert [r["batch"] for r in structured["onnxruntime"]] == [1, 4]
    assert "dense (original width) vs compacted" in out and "saved/removed" in out


@needs_transformers
def test_bench_of_a_compacted_llama_decodes_the_same_tokens(uniform_llama, tmp_path, capsys):
    export_dir = tmp_path / "llama"
    assert main(["export", str(uniform_llama), "--out", str(export_dir)]) == 0
    assert main(["bench", str(export_dir), "--batch-sizes", "1", "--seqlen", "8", "--tokens", "16,4096",
                 "--decode-tokens", "4", "--repeats", "3", "--no-memory", "--no-onnx",
                 "--out", str(tmp_path / "bench")]) == 0
    out = capsys.readouterr().out
    structured = json.loads((tmp_path / "bench" / "bench.json").read_text())["structured"]
    assert [r["tokens"] for r in structured["torch"]] == [16, 64]           # 4096 bounded by the context of 64
    assert all(structured["macs"][str(t)]["ratio"] < 1 for t in (16, 64))
    decode = structured["decode"]
    assert decode["new_tokens"] == 4 and decode["same_tokens"] and decode["compacted_tokens_per_s"] > 0
    assert structured["onnxruntime_skipped"] == "skipped (--no-onnx)" and "tokens/s" in out


# --- refusals ----------------------------------------------------------------------------------------
@needs_transformers
def test_hf_of_blocks_of_different_widths_is_refused(owl_llama, tmp_path, capsys):
    out = tmp_path / "hf"
    err = _refused(["export", str(owl_llama), "--format", "hf", "--out", str(out)], "different widths", capsys, out)
    assert "--format compact" in err


BRANCHY = ("import math\nimport torch\nfrom torch import nn\n\n"
           "class Branchy(nn.Module):\n"
           "    def __init__(self, n, c):\n"
           "        super().__init__()\n"
           "        self.a, self.b = nn.Linear(n, 8), nn.Linear(8, c)\n"
           "    def forward(self, x):\n"
           "        x = x.flatten(1)\n"
           "        return self.b(torch.relu(self.a(x))) if x.sum() > 0 else self.b(self.a(x))\n\n"
           "def build(input_shape, num_classes):\n"
           "    return Branchy(math.prod(input_shape), num_classes)\n")


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnx), "pt"])
def test_a_model_torch_export_cannot_trace_is_one_sentence(fmt, tmp_path, capsys, monkeypatch, fresh_trust):
    (tmp_path / "cm_branchy_export.py").write_text(BRANCHY)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    assert main(["prune-init", "--model", "cm_branchy_export:build", "--density", "0.5", "--data", "digits",
                 "--steps", "2it", "--stack", "off", "--quiet", "--out", str(run)]) == 0
    out = tmp_path / "program"
    _refused(["export", str(run), "--model", "cm_branchy_export:build", "--format", fmt, "--out", str(out)],
             "depends on the values in its input", capsys, out)


def test_onnx_without_onnxruntime_is_one_sentence(channel_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out = tmp_path / "onnx"
    _refused(["export", str(channel_run), "--round", "1", "--format", "onnx", "--out", str(out)],
             "pip install 'ticketlab[onnx]'", capsys, out)


def test_a_deployed_resnet_channel_ticket_folds_its_batchnorms(tmp_path, capsys):
    """`load` folds each BatchNorm into the convolution before it: none is left, the outputs are the
    masked network's to float rounding, and the pruned channels stay removed."""
    from ticketlab.deploy import load

    run, out = tmp_path / "run", tmp_path / "deploy"
    assert main(["imp", "--data", "digits", "--model", "resnet20", "--granularity", "channel", "--rounds", "1",
                 "--rate", "0.5", "--steps", "3it", "--quiet", "--controls", "none", "--out", str(run)]) == 0
    assert main(["export", str(run), "--round", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    deployed, plain = load(out), load(out, sparse=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    source, masked = _vision_reference(run / "seed-0" / "round-01")
    x = torch.randn(5, *source.spec["input_shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _close(masked(x), deployed(x)) and _close(masked(x), plain(x))
