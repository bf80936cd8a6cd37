"""Files someone hands us never run code: planted pickles, crafted safetensors, model directories
that ship Python code. Each is refused with one sentence, and the code in it never runs."""

from __future__ import annotations

import json
import pickle
import struct
import shutil
from pathlib import Path

import pytest
import torch

from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.files import save_safetensors, save_tree
from ticketlab.train.checkpoint import CHECKPOINT_NAME

import children
import run_harness



class _Payload:
    """Unpickling this creates the file ``path``: proof that a pickle's code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"model": {}, "payload": _Payload(marker)}))


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    """An IMP run killed after round 0's first checkpoint (so round 0 resumes from it), made once."""
    out = tmp_path_factory.mktemp("killed") / "run"
    killed = children.run(children.harness, ["imp", str(out), "--kill", "after-replace:checkpoint.safetensors:1"],
                          timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "seed-0" / "round-00" / CHECKPOINT_NAME).exists()
    return out


@pytest.fixture
def interrupted_run(killed_run, tmp_path) -> Path:
    """A fresh copy of `killed_run` for one test to plant files in (the lock file, held by nobody, goes along)."""
    out = tmp_path / "run"
    shutil.copytree(killed_run, out)
    return out


def test_a_planted_pickle_checkpoint_is_refused_unopened(interrupted_run, tmp_path):
    marker = tmp_path / "pwned"
    _malicious_pickle(interrupted_run / "seed-0" / "round-00" / "checkpoint.pt", marker)
    with pytest.raises(TicketlabError, match="pickle checkpoint.*never loads"):
        run_harness.run("imp", interrupted_run)
    assert not marker.exists()


def test_a_pickle_posing_as_a_checkpoint_is_refused(interrupted_run, tmp_path):
    marker = tmp_path / "pwned"
    _malicious_pickle(interrupted_run / "seed-0" / "round-00" / CHECKPOINT_NAME, marker)
    with pytest.raises(TicketlabError, match="not a readable safetensors file"):
        run_harness.run("imp", interrupted_run)
    assert not marker.exists()


@pytest.mark.parametrize("tree, message", [
    ({"iteration": 4}, "lacks 'model'"),
    ({"model": {"w": torch.ones(2)}, "optimizer": {}, "torch_rng": torch.get_rng_state(), "iteration": 4,
      "evals": [{"val_loss": 1.0}], "elapsed": 1.0}, "written for another model"),
])
def test_a_checkpoint_that_does_not_fit_is_one_sentence(interrupted_run, tree, message):
    save_tree(interrupted_run / "seed-0" / "round-00" / CHECKPOINT_NAME, tree)
    with pytest.raises(TicketlabError, match=message):
        run_harness.run("imp", interrupted_run)


def test_safetensors_with_foreign_metadata_is_not_a_checkpoint(interrupted_run):
    save_safetensors(interrupted_run / "seed-0" / "round-00" / CHECKPOINT_NAME, {"x": torch.ones(1)}, {"hello": 1})
    with pytest.raises(TicketlabError, match="not written by ticketlab"):
        run_harness.run("imp", interrupted_run)


def test_a_crafted_header_is_refused(interrupted_run):
    # a header length far beyond the file: safetensors must refuse it without allocating it
    (interrupted_run / "seed-0" / "init.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    for unit in ("round-00",):
        (interrupted_run / "seed-0" / unit / CHECKPOINT_NAME).unlink()
    with pytest.raises(TicketlabError, match="not a readable safetensors file"):
        run_harness.run("imp", interrupted_run)


def test_mask_command_on_a_pickle_is_one_sentence(tmp_path, capsys):
    marker = tmp_path / "pwned"
    _malicious_pickle(tmp_path / "mask.safetensors", marker)
    assert main(["mask", str(tmp_path / "mask.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable safetensors file" in err
    assert not marker.exists()


def test_mask_with_an_empty_tensor_is_one_sentence(tmp_path, capsys):
    save_safetensors(tmp_path / "mask.safetensors", {"w": torch.zeros(0, dtype=torch.bool)})
    assert main(["mask", str(tmp_path / "mask.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty tensor" in err


from llm_assets import llm_assets  # noqa: E402,F401


def _copy_model(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_a_model_directory_with_its_own_code_is_refused(llm_assets, tmp_path, capsys, config_file):
    model = _copy_model(llm_assets.bert_dir, tmp_path / "model")
    marker = tmp_path / "pwned"
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    data = json.loads((model / config_file).read_text())
    data["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    (model / config_file).write_text(json.dumps(data))
    code = main(["llm", "eval", "--model", str(model), "--eval-text", str(llm_assets.text_path),
                 "--reference", str(llm_assets.bert_dir)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "never runs code" in err
    assert not marker.exists()


def test_a_model_directory_with_pickled_weights_only_is_refused(llm_assets, tmp_path, capsys):
    model = _copy_model(llm_assets.bert_dir, tmp_path / "model")
    marker = tmp_path / "pwned"
    (model / "model.safetensors").unlink()
    _malicious_pickle(model / "pytorch_model.bin", marker)
    code = main(["llm", "prune", "--model", str(model), "--method", "magnitude", "--sparsity", "0.5",
                 "--calib", str(llm_assets.text_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pickles" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
