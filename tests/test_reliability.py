"""Kill -9 at every write point, two processes on one run directory, deterministic bytes, the umask.

Each kill test runs a tiny experiment in a child process (`run_harness.py`) that SIGKILLs itself
at one chosen write, reruns it in this process, and checks that the run directory then equals an
uninterrupted run's: the same files, byte for byte, except the timing fields of ``result.json``
and ``summary.json`` (wall time differs between any two runs) and the lock file's PID.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
import torch

from ticketlab.errors import TicketlabError
from ticketlab.files import current_umask, is_temporary

import children
import run_harness

TIMING_FIELDS = ("wall_time", "scoring_time")


def _child(kind: str, out: Path, *extra: str, wait: bool = True) -> children.Child | children.Completed:
    """`run_harness` KIND OUT EXTRA in a forked child (`children`): finished, or running (``wait=False``)."""
    child = children.start(children.harness, [kind, str(out), *extra], env={"OMP_NUM_THREADS": "1"})
    return child.wait() if wait else child


def _strip_timing(node):
    if isinstance(node, dict):
        return {k: _strip_timing(v) for k, v in node.items() if not k.startswith(TIMING_FIELDS)}
    if isinstance(node, list):
        return [_strip_timing(v) for v in node]
    return node


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_run(actual: Path, expected: Path) -> None:
    """Same files; same bytes except timing fields and the lock's PID; no temporaries left."""
    got, want = _files(actual), _files(expected)
    assert sorted(got) == sorted(want)
    for name, path in want.items():
        assert not is_temporary(Path(name).name)
        if Path(name).name == ".lock":
            continue
        if Path(name).name in ("result.json", "summary.json", "scoring.json"):
            assert _strip_timing(json.loads(got[name].read_text())) == _strip_timing(json.loads(path.read_text())), name
            continue
        assert got[name].read_bytes() == path.read_bytes(), name


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """One uninterrupted run of every harness experiment (computed on first use)."""
    root = tmp_path_factory.mktemp("references")
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            run_harness.run(kind, root / kind)
            cache[kind] = root / kind
        return cache[kind]

    return get


KILL_POINTS = [
    ("imp", "before-replace:config.json:1"),           # the very first write: leaves .config.json.*.tmp
    ("imp", "before-replace:init.safetensors:1"),      # θ0
    ("imp", "after-append:metrics.jsonl:1"),           # first metrics line, before the first checkpoint
    ("imp", "torn-append:metrics.jsonl:5"),            # half a metrics line
    ("imp", "before-replace:checkpoint.safetensors:2"),
    ("imp", "after-replace:weights.safetensors:1"),
    ("imp", "after-replace:result.json:2"),            # result stored, checkpoint not yet deleted
    ("imp", "after-unlink:checkpoint.safetensors:2"),  # checkpoint deleted, summary not yet written
    ("imp", "before-replace:mask.safetensors:2"),      # round 1's mask
    ("imp", "after-replace:summary.json:1"),
    ("prune-init", "before-replace:scoring.json:1"),
    ("prune-init", "after-replace:result.json:1"),
    ("sparse-train", "before-replace:final_mask.safetensors:1"),
    ("sparse-train", "before-replace:checkpoint.safetensors:2"),
    ("compare", "after-replace:config.json:2"),        # the comparison claimed, its IMP run just claimed
    ("compare", "after-replace:summary.json:2"),
]


@pytest.mark.parametrize("kind, point", KILL_POINTS, ids=[f"{k}-{p}" for k, p in KILL_POINTS])
def test_kill_at_a_write_then_rerun_equals_an_uninterrupted_run(kind, point, tmp_path, references):
    out = tmp_path / "run"
    killed = _child(kind, out, "--kill", point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_harness.run(kind, out)
    assert_same_run(out, references(kind))


def test_a_second_process_on_a_held_directory_is_refused(tmp_path, references):
    out, hold = tmp_path / "run", tmp_path / "hold"
    hold.mkdir()
    first = _child("imp", out, "--hold", str(hold), wait=False)
    try:
        deadline = time.monotonic() + 60
        while not (hold / "claimed").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (hold / "claimed").exists(), first.wait().stderr if first.poll() is not None else "no claim"
        with pytest.raises(TicketlabError, match=rf"in use by another ticketlab run \(PID {first.pid}\)"):
            run_harness.run("imp", out)  # the same command again
        for kind in ("imp-lr2", "prune-init"):  # another configuration, another kind
            with pytest.raises(TicketlabError, match="different configuration"):
                run_harness.run(kind, out)
    finally:
        (hold / "go").write_text("")
        done = first.wait(timeout=120)
    assert done.returncode == 0, done.stderr
    assert_same_run(out, references("imp"))


@pytest.mark.parametrize("kinds", [("imp", "imp"), ("imp", "imp-lr2"), ("prune-init", "sparse-train"),
                                   ("compare", "compare"), ("sparse-train", "sparse-train"), ("prune-init", "imp")])
def test_two_processes_started_together_never_mix(kinds, tmp_path, references):
    out = tmp_path / "run"
    procs = [_child(kind, out, wait=False) for kind in kinds]
    done = [p.wait(timeout=180) for p in procs]
    codes, errors = [d.returncode for d in done], [d.stderr for d in done]
    config = json.loads((out / "config.json").read_text())
    winner = next(k for k in kinds if run_harness.EXPERIMENTS[k][1].to_json() == config["config"])
    if kinds[0] == kinds[1]:  # the same command twice: one resumes or waits out the other, never duplicates
        assert all(c in (0, 2) for c in codes) and 0 in codes, errors
    else:
        assert sorted(codes) == [0, 2], errors
        loser = errors[codes.index(2)]
        assert "in use by another ticketlab run" in loser or "different configuration" in loser
    run_harness.run(winner, out)  # finishes anything a refused twin left undone; changes nothing else
    assert_same_run(out, references(winner))


def test_identical_runs_write_identical_bytes(tmp_path, references):
    run_harness.run("prune-init", tmp_path / "again")
    reference = references("prune-init")
    for name, path in _files(reference).items():
        if path.suffix == ".safetensors" or path.name in ("metrics.jsonl", "config.json"):
            assert (tmp_path / "again" / name).read_bytes() == path.read_bytes(), name


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_follow_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        run_harness.run("imp", tmp_path / "run")
    finally:
        os.umask(old)
    for path in [tmp_path / "run", *(tmp_path / "run").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == expected, (path, oct(mode))


def test_leftover_temporaries_never_block_a_rerun(tmp_path, references):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.abcd1234.tmp").write_text("{half")
    (out / ".config.json.x_y_z123.tmp").write_text("{half")  # tempfile.mkstemp's naming (older versions)
    run_harness.run("imp", out)
    assert_same_run(out, references("imp"))


def test_a_foreign_directory_is_not_claimed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TicketlabError, match="holds no ticketlab run"):
        run_harness.run("imp", out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_hugging_face_directory_as_out_is_named_as_such(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    before = (out / "config.json").read_bytes()
    with pytest.raises(TicketlabError, match="not a ticketlab run's"):
        run_harness.run("imp", out)
    assert (out / "config.json").read_bytes() == before and not (out / ".lock").exists()


# --- a full disk, refused runs that claim nothing, results that cannot be silently wrong ------------
def _with_file_size_limit(limit: int, argv: list[str]) -> children.Completed:
    """``ticketlab ARGV`` in a child whose files cannot grow beyond ``limit`` bytes (a full disk)."""
    return children.run(children.cli_with_file_limit, limit, argv, env={"OMP_NUM_THREADS": "1"}, timeout=300)


def test_a_full_disk_during_training_is_one_sentence_and_the_run_resumes(tmp_path, capsys):
    from ticketlab.cli import main

    argv = ["imp", "--data", "digits", "--steps", "30it", "--eval-every", "10it", "--rounds", "1", "--quiet"]
    full = _with_file_size_limit(300_000, [*argv, "--out", str(tmp_path / "run")])
    assert full.returncode == 2 and full.stderr.count("\n") == 1, full.stderr
    assert "File too large" in full.stderr and "Traceback" not in full.stderr
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert main([*argv, "--out", str(tmp_path / "reference")]) == 0
    capsys.readouterr()
    assert_same_run(tmp_path / "run", tmp_path / "reference")


def test_a_collapsing_control_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import ticketlab.units.unit as unit_module
    from conftest import make_splits
    from ticketlab.experiments.sparse import SparseConfig, SparseExperiment

    def no_training(*args, **kwargs):
        raise AssertionError("trained before every mask was checked")

    monkeypatch.setattr(unit_module, "train", no_training)
    config = SparseConfig(kind="prune-init", method="synflow", densities=(0.05,), model="lenet300", data="toy",
                          controls=("shuffle", "reinit", "invert"), train=run_harness.TRAIN)
    with pytest.raises(TicketlabError, match="invert control's mask prunes every weight of layers.5.weight"):
        SparseExperiment.prepare(config, tmp_path / "run", data=make_splits())
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    allowed = SparseConfig(**{**config.__dict__, "allow_collapse": True})
    summary = SparseExperiment.prepare(allowed, tmp_path / "run", data=make_splits()).run()
    assert summary["rounds"][0]["controls"]["invert"]["collapsed_layers"] == ["layers.5.weight"]


def test_nan_starting_weights_name_the_cause(toy_splits):
    from conftest import tiny_mlp
    from ticketlab.train import TrainConfig, train

    model = tiny_mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(TicketlabError, match=r"weights training starts from hold NaN .*'2.weight'"):
        train(model, toy_splits, TrainConfig(steps="5it", batch_size=20), data_seed=0)


def test_divergence_is_one_sentence_without_warnings(toy_splits, recwarn):
    from conftest import tiny_mlp
    from ticketlab.train import TrainConfig, train

    config = TrainConfig(steps="20it", batch_size=20, lr=1.0, optimizer="sgd", eval_every="5it")
    object.__setattr__(config, "lr", 1e30)   # beyond what the config accepts, to force a divergence
    with pytest.raises(TicketlabError, match="Training diverged .* lower --lr"):
        train(tiny_mlp(), toy_splits, config, data_seed=0)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


from llm_assets import llm_assets  # noqa: E402,F401



def test_llm_prune_killed_before_its_final_rename_leaves_nothing_for_long(llm_assets, tmp_path, capsys):
    from ticketlab.cli import main

    out = tmp_path / "out"
    argv = ["llm", "prune", "--model", str(llm_assets.llama_dir), "--method", "wanda", "--sparsity", "0.5",
            "--calib", str(llm_assets.text_path), "--nsamples", "2", "--seqlen", "16", "--quiet", "--out", str(out)]
    killed = children.run(children.cli_killed_at, "before-replace:out:1", argv, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert leftovers and not out.exists()
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~current_umask()  # mkdtemp would give 0700


def test_llm_prune_with_a_full_disk_is_one_sentence_and_leaves_nothing(llm_assets, tmp_path):
    argv = ["llm", "prune", "--model", str(llm_assets.llama_dir), "--method", "magnitude", "--sparsity", "0.5",
            "--calib", str(llm_assets.text_path), "--nsamples", "2", "--seqlen", "16", "--quiet",
            "--out", str(tmp_path / "out")]
    full = _with_file_size_limit(20_000, argv)
    assert full.returncode == 2 and full.stderr.count("\n") == 1 and "File too large" in full.stderr, full.stderr
    assert list(tmp_path.iterdir()) == []


def test_train_tiny_never_saves_a_diverged_model(llm_assets, tmp_path):
    from ticketlab.llm.text import read_text
    from ticketlab.llm.tiny import TinyLMConfig, train_tiny_lm

    config = TinyLMConfig(layers=1, hidden=16, heads=2, context=16, vocab_size=300, steps=30, batch_size=2,
                          lr=1.0, warmup=1, grad_clip=1e30)
    object.__setattr__(config, "lr", 1e30)   # beyond what the config accepts, to force a divergence
    with pytest.raises(TicketlabError, match="diverged|non-finite"):
        train_tiny_lm(read_text(str(llm_assets.text_path)), tmp_path / "out", config)
    assert list(tmp_path.iterdir()) == []


def test_nan_weights_in_a_model_name_the_layer(llm_assets, tmp_path, capsys):
    from ticketlab.cli import main
    from ticketlab.llm.io import load_pretrained, save_pretrained

    loaded = load_pretrained(llm_assets.llama_dir)
    with torch.no_grad():
        loaded.model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    save_pretrained(loaded.model, loaded.tokenizer, tmp_path / "nan_model")
    code = main(["llm", "prune", "--model", str(tmp_path / "nan_model"), "--method", "wanda", "--sparsity", "0.5",
                 "--calib", str(llm_assets.text_path), "--nsamples", "2", "--seqlen", "16", "--quiet",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "model.layers.1.mlp.up_proj" in err and "NaN" in err
