"""Every bad value a user can type, for every command: one sentence on stderr, exit code 2, and
nothing written (``--out`` is never created for a refused command). Runs in-process through
`ticketlab.cli.main`; each case is refused before any real work, so the whole table takes seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ticketlab.cli import main
from ticketlab.files import save_safetensors

BIG = "99999999999999999999999"
IMP = ["imp", "--data", "digits", "--steps", "5it", "--rounds", "1", "--quiet"]
PAI = ["prune-init", "--data", "digits", "--steps", "5it", "--density", "0.2", "--quiet"]
DST = ["sparse-train", "--data", "digits", "--steps", "400it", "--density", "0.2", "--quiet"]
CMP = ["compare", "--data", "digits", "--steps", "5it", "--methods", "imp,random", "--density", "0.5", "--quiet"]

TRAINING_FLAGS = [
    (["--steps", "10"], "no unit"), (["--steps", "10xx"], "Cannot read step"), (["--steps", "-5it"], "Cannot read"),
    (["--steps", "0it"], "at least one iteration"), (["--steps", f"{BIG}ep"], "beyond the limit"),
    (["--steps", f"{BIG}it"], "beyond the limit"), (["--steps", "1e3it"], "Cannot read"),
    (["--warmup", "5"], "no unit"), (["--warmup", "abc"], "Cannot read"), (["--lr-drops", "5"], "no unit"),
    (["--lr-drops", "3it,abc"], "Cannot read"), (["--eval-every", "0it"], "must be positive"),
    (["--eval-every", "5"], "no unit"), (["--lr", "nan"], "finite"), (["--lr", "inf"], "finite"),
    (["--lr", "-1"], "greater than 0"), (["--lr", "0"], "greater than 0"), (["--lr", "abc"], "--lr"),
    (["--weight-decay", "nan"], "finite"), (["--weight-decay", "inf"], "finite"),
    (["--weight-decay", "-0.1"], "at least 0"), (["--optimizer", "sgd", "--momentum", "1"], "in [0, 1)"),
    (["--optimizer", "sgd", "--momentum", "nan"], "finite"), (["--momentum", "0.5"], "sgd only"),
    (["--nesterov"], "Nesterov"), (["--lr-gamma", "0"], "(0, 1]"), (["--lr-gamma", "2"], "(0, 1]"),
    (["--lr-gamma", "nan"], "finite"), (["--batch-size", "0"], "at least 1"), (["--batch-size", "-1"], "at least 1"),
    (["--batch-size", BIG], "at most"), (["--optimizer", "rmsprop"], "rmsprop"),
    (["--seeds", "0"], "at least one seed"), (["--seeds", "-1,2"], "at least 0"), (["--seeds", f"0,{BIG}"], "at most"),
    (["--seeds", "1,1"], "twice"), (["--seeds", "x"], "--seeds"), (["--seeds", ""], "--seeds"),
    (["--split-seed", "-1"], "at least 0"), (["--split-seed", BIG], "at most"),
    (["--val-fraction", "0"], "between 0 and 1"), (["--val-fraction", "1"], "between 0 and 1"),
    (["--val-fraction", "nan"], "finite"), (["--val-fraction", "1.5"], "between 0 and 1"),
    (["--model", "nope"], "Unknown model"), (["--data", "nope"], "nope"),
    (["--data", "mnist", "--data-dir", "/nonexistent/dir"], "mnist"), (["--device", "tpu7"], "Unknown device"),
    (["--device", "mps"], "not supported"), (["--device", "cuda:99"], "cuda"), (["--bogus-flag"], "bogus"),
    (["--width", "0"], "--width"), (["--width", "-2"], "--width"), (["--width", "nan"], "finite"),
    (["--width", "100"], "--width"), (["--stack", "0"], "--stack"), (["--stack", "lots"], "--stack"),
    (["--workers", "0"], "--workers"), (["--workers", "5"], "--workers"),
    # issue 18: a count of replicates is bounded; empty list items, other scripts' digits and spaces
    # inside a step are refused; the LR schedule must be sorted and fit the budget; empty values
    # are never the default; the LR is bounded
    (["--seeds", BIG], "at most"), (["--seeds", "1,,2"], "empty item"), (["--seeds", "1,2,"], "empty item"),
    (["--seeds", "٣"], "digits 0-9"), (["--steps", "٥it"], "Cannot read step"),
    (["--steps", "5 it"], "Cannot read step"),
    (["--batch-size", "١"], "--batch-size"), (["--lr", "١e-3"], "--lr"), (["--workers", "١"], "--workers"),
    (["--lr-drops", "3it,2it"], "increasing order"), (["--lr-drops", "3it,3it"], "increasing order"),
    (["--lr-drops", "3ep,2it"], "increasing order"), (["--lr-drops", "3it,,4it"], "empty item"),
    (["--lr-drops", "999999ep"], "not before the end of the training budget"),
    (["--lr-drops", "5it"], "not before the end of the training budget"),
    (["--warmup", "999999ep"], "beyond the training budget"), (["--lr", "1e308"], "at most 10"),
    (["--lr", "1e3"], "at most 10"), (["--out", ""], "--out"), (["--log-dir", ""], "--log-dir"),
    (["--data-dir", " "], "--data-dir"), (["--lr-drops", ""], "--lr-drops"),
    # known once the data is: 1ep of digits at batch 60 is 21 iterations, beyond --steps 5it
    (["--lr-drops", "1ep"], "(21 iterations) is not before the end"),
    (["--warmup", "1ep"], "(21 iterations) is beyond"),
    (["--device", "cpu:5"], "one CPU device"), (["--device", "cpu:1"], "one CPU device"),
]
IMP_FLAGS = [
    (["--rate", "nan"], "finite"), (["--rate", "1"], "between 0 and 1"), (["--rate", "0"], "between 0 and 1"),
    (["--rate", "-0.5"], "between 0 and 1"), (["--rate", "inf"], "finite"),
    (["--layer-rate", "output=nan"], "finite"), (["--layer-rate", "output=1.5"], "between 0 and 1"),
    (["--layer-rate", "=0.1"], "PATTERN=RATE"), (["--layer-rate", "output"], "PATTERN=RATE"),
    (["--layer-rate", "nosuchlayer=0.1"], "matches no"), (["--rounds", "-1"], "at least 0"),
    (["--rounds", "1001"], "at most"), (["--rounds", BIG], "at most"), (["--rounds", "abc"], "--rounds"),
    (["--tolerance", "nan"], "finite"), (["--tolerance", "-1"], "between 0 and 100"),
    (["--tolerance", "inf"], "finite"), (["--tolerance", "101"], "between 0 and 100"),
    (["--rewind", "5ep"], "rewind"), (["--rewind", "soon"], "Cannot read step"), (["--rewind", "5"], "no unit"),
    (["--controls", "magic"], "Unknown control"), (["--controls", "reinit,reinit"], "twice"),
    (["--scope", "neither"], "neither"), (["--ignore", "nosuchlayer"], "matches no"),
    (["--early-bird", "0"], "--early-bird must be strictly between 0 and 1"), (["--early-bird", "-1"], "--early-bird"),
    (["--early-bird", "nan"], "finite"), (["--early-bird", "1"], "strictly between"), (["--early-bird", "x"], "--early-bird"),
    (["--early-bird", "0.5"], "can never fail"), (["--early-bird", "0.1", "--early-bird-window", "1"], "at least 2"),
    (["--early-bird-window", "3"], "only with --early-bird"), (["--early-bird", "0.1", "--rounds", "0"], "pruning round"),
    (["--dense-accuracy", "101"], "between 0 and 100"), (["--dense-accuracy", "nan"], "finite"),
    (["--rate", "0.5,0.2"], "2 rates for 1 pruning round"), (["--rate", "0.5,x"], "Cannot read --rate"),
    (["--rate", "0.5,1"], "between 0 and 1"), (["--rate", ","], "at least one"),
    (["--density", "0.05", "--rate", "0.2"], "not both"), (["--density", "0"], "between 0 and 1"),
    (["--density", "1"], "between 0 and 1"), (["--density", "nan"], "finite"),
    (["--density", "0.05", "--rounds", "0"], "pruning round"),
    (["--density", "0.05", "--layer-rate", "layers.3.weight=0.1"], "cannot be reached"),
    (["--rounds", "٣"], "--rounds"), (["--controls", "reinit,"], "empty item"), (["--rate", "0.2,,0.1"], "empty item"),
    (["--controls", ""], "--controls"), (["--ignore", ""], "--ignore"),
]
PAI_FLAGS = [
    (["--method", "nope"], "nope"), (["--density", "0"], "between 0 and 1"), (["--density", "1"], "between 0 and 1"),
    (["--density", "nan"], "finite"), (["--density", "x"], "--density"), (["--density", ","], "at least one"),
    (["--density", "0.5,0.5"], "twice"), (["--scope", "x"], "x"), (["--distribution", "x"], "x"),
    (["--distribution", "erk"], "--scope layer only"), (["--controls", "static"], "static"),
    (["--score-batches", "0"], "at least 1"), (["--score-batch-size", "0"], "at least 1"),
    (["--synflow-iterations", "0"], "at least 1"), (["--synflow-iterations", BIG], "at most"),
    (["--score-batches", BIG], "at most"),
    (["--density", "0.5,,0.2"], "empty item"), (["--score-batches", "١"], "--score-batches"),
]
DST_FLAGS = [
    (["--update-every", "0it"], "positive"), (["--update-every", "5"], "no unit"), (["--alpha", "0"], "alpha"),
    (["--alpha", "1.5"], "alpha"), (["--alpha", "nan"], "alpha"), (["--end-fraction", "0"], "end-fraction"),
    (["--end-fraction", "nan"], "end-fraction"), (["--update-every", "200it"], "minimum of 4"),
    (["--controls", "invert"], "invert"), (["--method", "snip"], "snip"),
    (["--lr-drops", "20ep"], "(420 iterations) is not before the end"),      # 400it: 19 epochs and a bit
    (["--lr-drops", "1ep,10it"], "increasing order"), (["--seeds", BIG], "at most"),
]
CMP_FLAGS = [
    (["--methods", "nope"], "nope"), (["--methods", "imp,imp"], "once"), (["--methods", ","], "at least one"),
    (["--density", "0"], "between 0 and 1"), (["--density", "nan"], "finite"), (["--rate", "1"], "between 0 and 1"),
    (["--methods", "rigl", "--steps", "2ep"], "minimum of 4"), (["--distribution", "x"], "x"),
    (["--methods", "set", "--steps", "500it", "--update-every", "500it"], "minimum of 4"),
    (["--methods", "snip,"], "empty item"), (["--methods", "imp,,random"], "empty item"), (["--seeds", BIG], "at most"),
    (["--seeds", "0,,1"], "empty item"), (["--lr-drops", "1ep"], "is not before the end"), (["--out", ""], "--out"),
]

CASES = ([(IMP, f, m) for f, m in TRAINING_FLAGS + IMP_FLAGS] + [(PAI, f, m) for f, m in TRAINING_FLAGS + PAI_FLAGS]
         + [(DST, f, m) for f, m in DST_FLAGS] + [(CMP, f, m) for f, m in CMP_FLAGS])


def _refused(argv: list[str], fragment: str, capsys) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    assert err.startswith("ticketlab: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and fragment.lower() in err.lower(), err
    return err


@pytest.mark.parametrize("base, extra, fragment", CASES, ids=[f"{b[0]} {' '.join(e)}" for b, e, _ in CASES])
def test_bad_training_flags(base, extra, fragment, tmp_path, capsys):
    out = tmp_path / "out"
    _refused([*base, "--out", str(out), *extra], fragment, capsys)
    assert not out.exists()


def test_out_that_is_a_file_or_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _refused([*IMP, "--out", str(tmp_path / "file")], "is a file", capsys)
    _refused([*IMP, "--out", str(tmp_path / "file" / "run")], "Cannot create", capsys)


def _summary(**entry):
    base = {"round": 0, "density": 1.0, "test_accuracy": 90.0, "test_accuracy_std": 0.0,
            "early_stop_iteration": 5, "early_stop_iteration_std": 0.0, "winning_ticket": True, "controls": {}}
    return {"kind": "imp", "seeds": [0], "controls": [], "rounds": [{**base, **entry}]}


@pytest.mark.parametrize("summary, fragment", [
    ([], "not an object"), ({"rounds": 3}, "no list of rounds"), ({"rounds": [1]}, "not an object"),
    (_summary(density="x"), "'density'"), (_summary(controls={"reinit": 5}), "control 'reinit'"),
    (_summary(collapsed_layers=3), "collapsed_layers"), ({**_summary(), "controls": "reinit"}, "controls"),
    ({**_summary(), "dense_test_accuracy": "high"}, "dense_test_accuracy"),
])
def test_report_on_a_malformed_summary(summary, fragment, tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    _refused(["report", str(tmp_path)], fragment, capsys)


def test_report_on_non_json_and_missing(tmp_path, capsys):
    _refused(["report", str(tmp_path / "nope")], "does not exist", capsys)
    _refused(["report", str(tmp_path)], "no summary.json", capsys)
    (tmp_path / "summary.json").write_text("{torn")
    _refused(["report", str(tmp_path)], "as JSON", capsys)


def test_mask_command_bad_files(tmp_path, capsys):
    _refused(["mask", str(tmp_path / "nope.safetensors")], "does not exist", capsys)
    (tmp_path / "text.safetensors").write_text("hello")
    _refused(["mask", str(tmp_path / "text.safetensors")], "not a readable", capsys)
    save_safetensors(tmp_path / "float.safetensors", {"w": torch.ones(2)})
    _refused(["mask", str(tmp_path / "float.safetensors")], "non-boolean", capsys)
    save_safetensors(tmp_path / "mask.safetensors", {"layers.1.weight": torch.ones(3, 3, dtype=torch.bool)})
    _refused(["mask", str(tmp_path / "mask.safetensors"), "--model", "lenet300", "--data", "digits"], "shape", capsys)


def test_damaged_scoring_json_is_one_sentence(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*PAI, "--steps", "2it", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    unit = out / "seed-0" / "density-0.2"
    (unit / "result.json").unlink()
    (unit / "scoring.json").write_text(json.dumps({"collapsed_layers": []}))
    _refused(argv, "scoring_time", capsys)


from llm_assets import llm_assets  # noqa: E402,F401


def _llm_cases(assets, tmp: Path) -> list[tuple[list[str], str]]:
    model = ["--model", str(assets.llama_dir)]
    calib = ["--calib", str(assets.text_path), "--nsamples", "2", "--seqlen", "16"]
    prune = ["llm", "prune", *model, *calib]
    full = tmp / "full"
    full.mkdir()
    (full / "x").write_text("x")
    run = tmp / "run"                      # a ticketlab run directory: not a Hugging Face model
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kind": "imp", "config": {"model": "lenet300"}}))
    wanda = [*prune, "--method", "wanda", "--sparsity", "0.5"]
    return [
        ([*prune, "--sparsity", "0.5"], "--method"),
        ([*prune, "--method", "wanda", "--sparsity", "0"], "between 0 and 1"),
        ([*prune, "--method", "wanda", "--sparsity", "1"], "between 0 and 1"),
        ([*prune, "--method", "wanda", "--sparsity", "nan"], "between 0 and 1"),
        ([*prune, "--method", "wanda", "--pattern", "abc"], "abc"),
        ([*prune, "--method", "wanda", "--pattern", "2:0"], "2:0"),
        ([*prune, "--method", "wanda", "--sparsity", "0.5", "--nsamples", "0"], "at least 1"),
        ([*prune, "--method", "wanda", "--sparsity", "0.5", "--nsamples", BIG], "at most"),
        ([*prune, "--method", "wanda", "--sparsity", "0.5", "--seqlen", "1"], "at least 2"),
        ([*prune, "--method", "wanda", "--sparsity", "0.5", "--seqlen", "100000"], "context"),
        ([*prune, "--method", "wanda", "--sparsity", "0.5", "--device", "tpu7"], "Unknown device"),
        ([*prune, "--method", "wanda", "--sparsity", "0.5", "--device", "cuda:7"], "cuda"),
        ([*prune, "--method", "sparsegpt", "--sparsity", "0.5", "--blocksize", "0"], "block size"),
        ([*prune, "--method", "sparsegpt", "--sparsity", "0.5", "--percdamp", "nan"], "dampening"),
        ([*prune, "--method", "sparsegpt", "--sparsity", "0.5", "--percdamp", "-1"], "dampening"),
        ([*prune, "--method", "wanda", "--sparsity", "0.5", "--targets", "nomatch"], "nomatch"),
        ([*prune, "--method", "wanda", "--sparsity", "0.5", "--calib", str(tmp / "missing.txt")], "missing.txt"),
        ([*prune, "--method", "wanda", "--sparsity", "0.5", "--eval-text", str(tmp / "missing.txt")], "missing.txt"),
        ([*prune, "--method", "wanda", "--sparsity", "0.5", "--magnitude-scope", "x"], "x"),
        ([*prune, "--method", "wanda", "--sparsity", "0.5", "--seed", "-1"], "at least 0"),
        (["llm", "prune", "--model", str(full), "--method", "wanda", "--sparsity", "0.5"], "config.json"),
        (["llm", "eval", *model, "--max-windows", "0"], "at least 1"),
        (["llm", "eval", *model, "--batch-size", "0"], "at least 1"),
        (["llm", "eval", *model, "--device", "tpu7"], "Unknown device"),
        (["llm", "eval", "--model", str(assets.bert_dir), "--seqlen", "8", "--eval-text", str(assets.text_path)], "seqlen"),
        (["llm", "eval", "--model", str(assets.bert_dir), "--max-sentences", "0"], "at least 1"),
        (["llm", "eval", *model, "--eval-text", str(tmp / "missing.txt")], "missing.txt"),
        (["llm", "train-tiny", "--text", str(assets.text_path), "--lr", "nan"], "finite"),
        (["llm", "train-tiny", "--text", str(assets.text_path), "--lr", "inf"], "finite"),
        (["llm", "train-tiny", "--text", str(assets.text_path), "--lr", "0"], "greater than 0"),
        (["llm", "train-tiny", "--text", str(assets.text_path), "--context", "1"], "--context"),
        (["llm", "train-tiny", "--text", str(assets.text_path), "--steps", "0"], "at least 1"),
        (["llm", "train-tiny", "--text", str(assets.text_path), "--layers", "0"], "at least 1"),
        (["llm", "train-tiny", "--text", str(assets.text_path), "--hidden", "30"], "multiple"),
        (["llm", "train-tiny", "--text", str(assets.text_path), "--vocab-size", "10"], "vocab-size"),
        (["llm", "train-tiny", "--text", str(assets.text_path), "--threads", "0"], "--threads must be a whole number"),
        (["llm", "train-tiny", "--text", str(assets.text_path), "--batch-size", "0"], "at least 1"),
        (["llm", "train-tiny", "--text", str(tmp / "missing.txt")], "missing.txt"),
        (["llm", "train-tiny", "--text", str(assets.text_path), "--seed", BIG], "at most"),
        # issue 18
        (["llm", "train-tiny", "--text", str(assets.text_path), "--lr", "1e308"], "at most 10"),
        (["llm", "train-tiny", "--text", str(assets.text_path), "--steps", "٣"], "--steps"),
        (["llm", "train-tiny", "--text", "", "--steps", "1"], "--text"),
        (["llm", "eval", *model, "--reference", str(tmp / "does" / "not" / "exist")], "does not exist"),
        (["llm", "eval", *model, "--reference", str(assets.text_path)], "is a file"),
        (["llm", "eval", *model, "--reference", str(run)], "ticketlab run directory"),
        (["llm", "eval", *model, "--reference", str(assets.bert_dir)], "applies to encoders"),
        (["llm", "eval", *model, "--reference", ""], "--reference"),
        (["llm", "eval", "--model", "", "--max-windows", "1"], "--model"),
        (["llm", "eval", *model, "--eval-text", ""], "--eval-text"),
        (["llm", "prune", "--model", "", "--method", "wanda", "--sparsity", "0.5", *calib], "--model"),
        ([*wanda, "--calib", ""], "--calib"), ([*wanda, "--targets", ""], "--targets"),
        ([*wanda, "--exclude", ""], "--exclude"), ([*wanda, "--targets", "q_proj,"], "empty item"),
        ([*wanda, "--exclude", ","], "names no pattern"), ([*wanda, "--nsamples", "٢"], "--nsamples"),
    ]


def test_llm_bad_input(llm_assets, tmp_path, capsys):
    for argv, fragment in _llm_cases(llm_assets, tmp_path):
        out = tmp_path / "out"
        if "--out" not in argv and argv[1] != "eval":
            argv = [*argv, "--out", str(out)]
        _refused(argv, fragment, capsys)
        assert not out.exists(), argv


def test_llm_out_not_empty(llm_assets, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    _refused(["llm", "prune", "--model", str(llm_assets.llama_dir), "--method", "wanda", "--sparsity", "0.5",
              "--calib", str(llm_assets.text_path), "--nsamples", "2", "--seqlen", "16", "--out", str(full)],
             "not empty", capsys)
    assert [p.name for p in full.iterdir()] == ["x"]


def test_eval_against_a_reference_of_another_vocabulary(llm_assets, tmp_path, capsys):
    from llm_assets import make_bert

    other = tmp_path / "other"
    from ticketlab.llm.io import save_pretrained

    save_pretrained(make_bert(len(llm_assets.tokenizer) + 7), llm_assets.tokenizer, other)
    _refused(["llm", "eval", "--model", str(llm_assets.bert_dir), "--reference", str(other),
              "--eval-text", str(llm_assets.text_path)], "vocabulary", capsys)


@pytest.mark.parametrize("extra, fragment", [
    (["--batch-sizes", "1,,2"], "empty item"), (["--batch-sizes", "١"], "--batch-sizes"),
    (["--batch-sizes", "1,"], "empty item"), (["--out", ""], "--out"), (["--seqlen", "٦٤"], "--seqlen"),
    (["--repeats", "٥"], "--repeats"), (["--device", "cpu:5"], "one CPU device"),
])
def test_bench_bad_values(extra, fragment, tmp_path, capsys):
    """Refused before the directory is read (it is no export here)."""
    _refused(["bench", str(tmp_path), *extra], fragment, capsys)
    assert not (tmp_path / "bench.json").exists()


def test_bench_seqlen_beyond_the_context_length(llm_assets, tmp_path, capsys):
    """The tiny LLaMA has 64 positions: --seqlen 65 is refused before anything is timed (RoPE
    would run on: at --seqlen 100000 for hours)."""
    pruned, exported = tmp_path / "pruned", tmp_path / "exported"
    assert main(["llm", "prune", "--model", str(llm_assets.llama_dir), "--method", "wanda", "--pattern", "2:4",
                 "--calib", str(llm_assets.text_path), "--nsamples", "2", "--seqlen", "16", "--quiet",
                 "--out", str(pruned)]) == 0
    assert main(["export", str(pruned), "--out", str(exported)]) == 0
    capsys.readouterr()
    for seqlen in ("65", "100000"):
        err = _refused(["bench", str(exported), "--seqlen", seqlen, "--batch-sizes", "1", "--repeats", "3",
                        "--no-memory", "--out", str(tmp_path / "bench")], "context length of 64", capsys)
        assert f"--seqlen {seqlen}" in err
    assert not (tmp_path / "bench").exists()


@pytest.mark.parametrize("argv, hint", [
    (["compare", "--densities", "0.1"], "--densities is now --density"),
    (["compare", "--imp-rate", "0.2"], "--imp-rate is now --rate"),
    (["imp", "--target-density", "0.1"], "--target-density is now --density"),
])
def test_old_spellings_get_a_one_sentence_hint(argv, hint, tmp_path, capsys):
    _refused([*argv, "--out", str(tmp_path / "out")], hint, capsys)
    assert not (tmp_path / "out").exists()
