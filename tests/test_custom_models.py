"""``--model module:function`` and ``--data module:function``: user code named on the command line
trains like a registered model or dataset, every way it can be wrong is one sentence (exit code 2),
and a spec read from a run directory's files is never imported."""

import itertools
import json
import sys

import pytest
import torch

from ticketlab.cli import main
from ticketlab.data import DataSplits, load_dataset
from ticketlab.errors import TicketlabError
from ticketlab import user_code
from ticketlab.models import create_model
from ticketlab.user_code import trust_user_code
from ticketlab.train.stacking import stack_networks

from conftest import strip_times

MODELS = '''
import math
import torch
from torch import nn

def tiny_mlp(input_shape, num_classes):
    # sized with tensor maths on purpose: export lays models out on the meta device, where such a
    # builder fails, so user code is built on the CPU instead
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 32), nn.ReLU(),
                         nn.Linear(32, num_classes))

def broken(input_shape, num_classes):
    raise ValueError("no such layer size")

def not_a_module(input_shape, num_classes):
    return [nn.Linear(2, 2)]

def three_logits(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 3))

def no_linear(input_shape, num_classes):
    return nn.Sequential(nn.Conv2d(input_shape[0], num_classes, input_shape[1:]), nn.Flatten())

NOT_CALLABLE = 3
'''

DATA = '''
import torch
from ticketlab.data.splits import build_splits

def blobs():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (400,), generator=g)
    x = torch.randn(400, 16, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 16).float()
    return build_splits("blobs", x[:300], y[:300], x[300:], y[300:], num_classes=3, source="blobs()",
                        val_fraction=0.1, split_seed=0)

def float_labels():
    s = blobs()
    return s.__class__(**{**s.__dict__, "train_y": s.train_y.float()})

def a_dict():
    return {"train_x": torch.zeros(2, 3)}
'''

_NUMBERS = itertools.count()
IMP = ["imp", "--steps", "10it", "--rounds", "1", "--seeds", "1", "--quiet"]

# Each test starts with no user code trusted and forgets the cm_* modules it imported (conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_trust")


@pytest.fixture
def user_files(tmp_path, monkeypatch):
    """``cm_models_<n>.py`` and ``cm_data_<n>.py`` (new names per test: imports are cached) in a
    working directory that is not on sys.path."""
    n = next(_NUMBERS)
    models, data = f"cm_models_{n}", f"cm_data_{n}"
    (tmp_path / f"{models}.py").write_text(MODELS)
    (tmp_path / f"{data}.py").write_text(DATA)
    monkeypatch.chdir(tmp_path)
    return models, data


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def _custom_model_args(models: str, out, *extra: str) -> list[str]:
    """The tiny IMP command line training ``models``'s tiny_mlp on digits into ``out``."""
    return [*IMP, *extra, "--model", f"{models}:tiny_mlp", "--data", "digits", "--out", str(out)]


def _train_custom_model(models: str, out, *extra: str) -> list[str]:
    """Runs `_custom_model_args` (it must succeed) and returns the command line, to run again."""
    args = _custom_model_args(models, out, *extra)
    assert main(args) == 0
    return args


def test_imp_trains_a_custom_model_and_resumes_it(user_files, tmp_path, capsys):
    models, _ = user_files
    args = _train_custom_model(models, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["model"] == f"{models}:tiny_mlp"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert main(args) == 0  # the same command line again: resumes, finds everything done
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    assert str(tmp_path) not in sys.path  # the working directory was on sys.path for the import only


def test_resuming_where_the_module_cannot_be_imported_is_one_sentence(user_files, tmp_path, capsys, monkeypatch):
    models, _ = user_files
    args = _train_custom_model(models, tmp_path / "run")
    del sys.modules[models]  # as in a new process
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, err = _run(args, capsys)
    assert code == 2
    assert f"Cannot import module '{models}' for --model {models}:tiny_mlp: it is neither in the working " \
           f"directory ({tmp_path / 'elsewhere'}) nor on PYTHONPATH." in err


def test_imp_trains_on_custom_data(user_files, tmp_path):
    _, data = user_files
    out = tmp_path / "run"
    assert main(IMP + ["--model", "lenet300", "--data", f"{data}:blobs", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["data"] == f"{data}:blobs"


def test_custom_model_in_worker_processes(user_files, tmp_path):
    """Two worker processes import the module too, and train what one process trains."""
    models, _ = user_files
    _train_custom_model(models, tmp_path / "workers", "--seeds", "2", "--workers", "2")
    _train_custom_model(models, tmp_path / "alone", "--seeds", "2", "--workers", "1")
    summary = json.loads((tmp_path / "workers" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert strip_times(summary) == strip_times(json.loads((tmp_path / "alone" / "summary.json").read_text()))


@pytest.mark.parametrize("flag, spec, message", [
    ("--model", "cm_nowhere:tiny_mlp", "Cannot import module 'cm_nowhere' for --model cm_nowhere:tiny_mlp: it is "
                                      "neither in the working directory"),
    ("--model", "{models}:missing", "Module '{models}' ({path}) has no function 'missing' for --model {models}:missing."),
    ("--model", "{models}:NOT_CALLABLE", "--model {models}:NOT_CALLABLE names a int, not a function."),
    ("--model", "{models}:broken", "{models}:broken((1, 8, 8), 10) raised ValueError: no such layer size."),
    ("--model", "{models}:not_a_module", "--model {models}:not_a_module returned a list, not a torch.nn.Module."),
    ("--model", "{models}:three_logits", "--model {models}:three_logits's network maps a batch of shape (2, 1, 8, 8) "
                                        "to (2, 3), not to logits of shape (2, 10)."),
    ("--model", "{models}:no_linear", "--model {models}:no_linear returned a network without an nn.Linear layer"),
    ("--model", "{models}:tiny:mlp", "Cannot read --model '{models}:tiny:mlp': write module:function"),
    ("--data", "cm_nowhere:blobs", "Cannot import module 'cm_nowhere' for --data cm_nowhere:blobs"),
    ("--data", "{data}:a_dict", "--data {data}:a_dict returned a dict, not a ticketlab.data.DataSplits"),
    ("--data", "{data}:float_labels", "--data {data}:float_labels: train_y is torch.float32 of shape (270,), "
                                      "not int64 class indices of shape (270,)."),
])
def test_each_mistake_is_one_sentence_and_exit_code_2(user_files, tmp_path, capsys, flag, spec, message):
    models, data = user_files
    path = tmp_path / f"{models}.py"
    spec, message = (s.format(models=models, data=data, path=path) for s in (spec, message))
    args = IMP + ["--model", "lenet300", "--data", "digits", "--out", str(tmp_path / "run")]
    args[args.index(flag) + 1] = spec
    code, err = _run(args, capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()  # refused before the run directory is touched


def test_width_is_refused_for_a_custom_model(user_files, tmp_path, capsys):
    models, _ = user_files
    code, err = _run(_custom_model_args(models, tmp_path / "run", "--width", "2"), capsys)
    assert code == 2 and f"--width scales the registered models only; {models}:tiny_mlp builds its own" in err


def test_a_spec_not_named_on_the_command_line_is_never_imported(tmp_path, monkeypatch):
    (tmp_path / "cm_evil.py").write_text("open('IMPORTED', 'w').close()\ndef fn(s, c):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TicketlabError, match=r"only when this command's own --model names it \(type --model cm_evil:fn; "
                                             r"from Python, call trust_user_code\('cm_evil:fn'\) first\), never from a "
                                             r"run directory's files\.$"):
        create_model("cm_evil:fn", (1, 8, 8), 10, seed=0)  # as `export` would, from a run's model.json
    with pytest.raises(TicketlabError, match="--data names it"):
        load_dataset("cm_evil:fn")
    assert not (tmp_path / "IMPORTED").exists() and "cm_evil" not in sys.modules


def test_export_of_a_custom_model_run_does_not_import_it(user_files, tmp_path, capsys, monkeypatch):
    models, _ = user_files
    out = tmp_path / "run"
    _train_custom_model(models, out)
    monkeypatch.setattr(user_code, "_TRUSTED", set())  # a later command: only its own flags are trusted
    del sys.modules[models]
    code, err = _run(["export", str(out), "--out", str(tmp_path / "exported")], capsys)
    assert code == 2 and "never from a run directory's files" in err and models not in sys.modules
    assert f"type --model {models}:tiny_mlp" in err
    assert not (tmp_path / "exported").exists()


def test_export_bench_and_stability_of_a_custom_run_when_the_spec_is_typed_again(user_files, tmp_path, capsys):
    models, data = user_files
    spec, data_spec, out, exported = f"{models}:tiny_mlp", f"{data}:blobs", tmp_path / "run", tmp_path / "exported"
    assert main(IMP + ["--model", spec, "--data", data_spec, "--out", str(out)]) == 0
    user_code._TRUSTED.clear()  # each later command trusts its own flags only
    assert main(["export", str(out), "--out", str(exported), "--model", spec]) == 0
    assert json.loads((exported / "ticketlab.json").read_text())["spec"]["model"] == spec
    user_code._TRUSTED.clear()
    assert main(["bench", str(exported), "--model", spec, "--repeats", "3", "--batch-sizes", "1"]) == 0
    assert json.loads((exported / "bench.json").read_text())["peak_memory_bytes"]["deployed"] > 0  # child process too
    user_code._TRUSTED.clear()
    code, err = _run(["stability", str(out), "--round", "1", "--points", "3", "--quiet", "--model", spec], capsys)
    assert code == 2 and f"type --data {data_spec}" in err   # the data is user code too
    assert main(["stability", str(out), "--round", "1", "--points", "3", "--quiet", "--model", spec,
                 "--data", data_spec]) == 0


@pytest.mark.parametrize("command", ["export", "bench", "stability"])
def test_a_registered_name_typed_to_trust_is_one_sentence(tmp_path, capsys, command):
    code, err = _run([command, str(tmp_path), "--model", "lenet300", "--out", str(tmp_path / "x")]
                     + (["--round", "1"] if command == "stability" else []), capsys)
    assert code == 2 and "--model here only names user code (module:function" in err


def test_a_custom_model_is_seeded_like_a_registered_one_and_stacks(user_files):
    models, _ = user_files
    spec = f"{models}:tiny_mlp"
    trust_user_code(spec)
    a, b = (create_model(spec, (1, 8, 8), 10, seed=7) for _ in range(2))
    c = create_model(spec, (1, 8, 8), 10, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[1].weight, c[1].weight)
    assert (a.input_shape, a.num_classes, a.width) == ((1, 8, 8), 10, 1.0)
    stacked = stack_networks([a, c])  # Linear / ReLU / Flatten: stacked training applies
    x = torch.randn(2, 5, 1, 8, 8)       # network n sees x[n]
    torch.testing.assert_close(stacked(x), torch.stack([a(x[0]), c(x[1])]))


def test_custom_data_is_checked_and_returned_as_splits(user_files):
    _, data = user_files
    trust_user_code(f"{data}:blobs")
    splits = load_dataset(f"{data}:blobs")
    assert isinstance(splits, DataSplits)
    assert splits.input_shape == (16,) and splits.num_classes == 3
    assert (len(splits.train_y), len(splits.val_y), len(splits.test_y)) == (270, 30, 100)
