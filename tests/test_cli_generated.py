"""The CLI generated from the configs: every field is a flag, every registered name is accepted,
flags build the same config as the Python API; runs can be extended; progress without a terminal."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import click
import pytest

from ticketlab.cli import cli, main
from ticketlab.cli.common import recipe_values
from ticketlab.cli.options import config_from, flagged_fields
from ticketlab.data import list_datasets
from ticketlab.data.augment import AUGMENTATIONS
from ticketlab.densities import DISTRIBUTIONS
from ticketlab.experiments.compare import METHODS, CompareConfig
from ticketlab.experiments.sparse import DST_METHODS, PAI_METHODS, PruneInitConfig, SparseTrainConfig
from ticketlab.lottery import IMPConfig
from ticketlab.models import list_models
from ticketlab.train import TrainConfig
from ticketlab.train.config import OPTIMIZERS

from conftest import requires

COMMANDS = {"imp": IMPConfig, "prune-init": PruneInitConfig, "sparse-train": SparseTrainConfig,
            "compare": CompareConfig}
TINY = ["--data", "digits", "--steps", "10it", "--quiet", "--threads", "1"]


def _params(command: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in cli.commands[command].params}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_config_field_is_a_flag_of_its_command(command):
    params = _params(command)
    fields = {f.name for f, _ in flagged_fields(COMMANDS[command])}
    assert fields <= set(params), fields - set(params)
    unflagged = {f.name for f in dataclasses.fields(COMMANDS[command]) if f.name != "train"} - fields
    assert unflagged == ({"scope"} if command == "sparse-train" else set())   # DST is layer-wise by definition


LLM_COMMANDS = {"prune": ("OneShotRun", "OneShotConfig", "CalibrationConfig", "EvaluationConfig"),
                "eval": ("ModelEvalConfig",), "train-tiny": ("TinyLMConfig",)}


@pytest.mark.parametrize("command", LLM_COMMANDS)
def test_every_llm_config_field_is_a_flag_of_its_command(command):
    """The llm commands' options are generated from their configs too (each parsed into its own key)."""
    from ticketlab.llm.config import OneShotConfig
    from ticketlab.llm.model_eval import ModelEvalConfig
    from ticketlab.llm.run import CalibrationConfig, EvaluationConfig, OneShotRun
    from ticketlab.llm.tiny import TinyLMConfig

    classes = {c.__name__: c for c in (OneShotConfig, ModelEvalConfig, CalibrationConfig, EvaluationConfig,
                                       OneShotRun, TinyLMConfig)}
    params = {p.name: p for p in cli.commands["llm"].commands[command].params}
    keys = [flag.key(f.name) for name in LLM_COMMANDS[command] for f, flag in flagged_fields(classes[name])]
    assert len(keys) == len(set(keys)) and set(keys) <= set(params), set(keys) - set(params)
    unflagged = {f"{name}.{f.name}" for name in LLM_COMMANDS[command] for f in dataclasses.fields(classes[name])
                 if f.metadata.get("flag") is None}
    assert unflagged == {"prune": {"OneShotRun.method", "OneShotRun.calibration", "OneShotRun.evaluation"},
                         "eval": set(),
                         "train-tiny": {f"TinyLMConfig.{n}" for n in ("min_lr_ratio", "warmup", "weight_decay",
                                                                      "grad_clip")}}[command]


def test_llm_prune_flags_build_the_run_the_python_api_builds():
    from ticketlab.llm import CalibrationConfig, EvaluationConfig, OneShotConfig, OneShotRun

    command = cli.commands["llm"].commands["prune"]
    args = ["--method", "sparsegpt", "--pattern", "2:4", "--targets", "q_proj,k_proj", "--targets", "o_proj",
            "--calib-part", "all", "--nsamples", "16", "--seed", "3", "--eval-text", "t.txt", "--eval-part", "all",
            "--out", "o", "--dtype", "bfloat16", "--layer-sparsity", "uniform"]
    with command.make_context("prune", args) as ctx:
        opts = ctx.params
        run = config_from(OneShotRun, opts, method=config_from(OneShotConfig, opts),
                          calibration=config_from(CalibrationConfig, opts),
                          evaluation=config_from(EvaluationConfig, opts))
    assert run == OneShotRun(method=OneShotConfig(method="sparsegpt", pattern="2:4", targets=("q_proj", "k_proj", "o_proj")),
                             out="o", calibration=CalibrationConfig(part="all", nsamples=16, seed=3),
                             evaluation=EvaluationConfig(text="t.txt", part="all"), dtype="bfloat16")


@pytest.mark.parametrize("command, name, registry", [
    ("prune-init", "method", PAI_METHODS), ("sparse-train", "method", DST_METHODS),
    ("prune-init", "distribution", DISTRIBUTIONS), ("sparse-train", "distribution", DISTRIBUTIONS),
    ("compare", "distribution", DISTRIBUTIONS), ("imp", "optimizer", OPTIMIZERS),
    ("imp", "augment", ("auto", *AUGMENTATIONS)),
])
def test_choices_come_from_the_registries(command, name, registry):
    assert list(_params(command)[name].type.choices) == list(registry)


def test_every_registered_name_is_accepted_by_the_cli():
    def build(cls, **opts):
        ctx = click.Context(cli.commands["imp"])
        with ctx:
            return config_from(cls, opts)

    for model in (m.name for m in list_models()):
        assert build(IMPConfig, model=model).model == model
    for data in (d.name for d in list_datasets()):
        assert build(IMPConfig, data=data).data == data
    assert build(CompareConfig, methods=",".join(METHODS)).methods == METHODS
    for method in PAI_METHODS:
        assert build(PruneInitConfig, method=method, densities="0.1").method == method
    for method in DST_METHODS:
        assert build(SparseTrainConfig, method=method, densities="0.1").method == method


def test_flags_build_the_config_the_python_api_builds():
    """Parsed as the imp command parses them (src/ticketlab/cli/lottery.py), without training."""
    argv = ["--data", "digits", "--rounds", "3", "--rate", "0.5,0.2", "--layer-rate", "output=0.1",
            "--seeds", "0,4", "--rewind", "5it", "--controls", "reinit,random", "--steps", "40it", "--lr", "0.01",
            "--optimizer", "sgd", "--momentum", "0.9", "--lr-drops", "10it,20it", "--quiet", "--threads", "1"]
    with cli.commands["imp"].make_context("imp", argv) as ctx:
        config = config_from(IMPConfig, ctx.params, recipe_values(ctx.params["recipe"], "imp", IMPConfig))
    expected = IMPConfig(data="digits", rounds=3, rate=(0.5, 0.2), layer_rates=(("output", 0.1),), seeds=(0, 4),
                         rewind="5it", controls=("reinit", "random"),
                         train=TrainConfig(steps="40it", lr=0.01, optimizer="sgd", momentum=0.9,
                                           lr_drops=("10it", "20it")))
    assert config == expected and config.to_json() == expected.to_json()


def _weights(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("weights.safetensors"))}


def test_more_rounds_and_seeds_extend_a_finished_run_with_the_bits_of_a_fresh_one(tmp_path):
    base = ["imp", *TINY, "--controls", "none", "--out"]
    assert main([*base, str(tmp_path / "grown"), "--rounds", "1", "--seeds", "1"]) == 0
    first = _weights(tmp_path / "grown")
    assert main([*base, str(tmp_path / "grown"), "--rounds", "2", "--seeds", "2"]) == 0
    assert main([*base, str(tmp_path / "fresh"), "--rounds", "2", "--seeds", "2"]) == 0
    grown, fresh = _weights(tmp_path / "grown"), _weights(tmp_path / "fresh")
    assert grown == fresh and len(grown) == 6                 # 2 seeds x rounds 0..2
    assert all(grown[k] == v for k, v in first.items())       # the finished units were kept
    summary = json.loads((tmp_path / "grown" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and len(summary["rounds"]) == 3


@pytest.mark.parametrize("change, fragment", [   # fewer rounds: tests/test_imp.py
    (["--rounds", "2", "--seeds", "1"], "differs in: seeds"),      # seed 1 dropped
    (["--rounds", "2", "--seeds", "2", "--lr", "0.1"], "differs in: train"),
])
def test_other_changes_are_still_refused(change, fragment, tmp_path, capsys):
    base = ["imp", *TINY, "--controls", "none", "--out", str(tmp_path / "run")]
    assert main([*base, "--rounds", "2", "--seeds", "0,1"]) == 0
    before = _weights(tmp_path / "run")
    capsys.readouterr()
    assert main([*base, *change]) == 2
    assert fragment in capsys.readouterr().err
    assert _weights(tmp_path / "run") == before


def test_compare_with_more_methods_and_densities_runs_only_the_new_cells(tmp_path):
    base = ["compare", *TINY, "--out", str(tmp_path / "cmp")]
    assert main([*base, "--methods", "random", "--density", "0.5"]) == 0
    first = _weights(tmp_path / "cmp")
    assert main([*base, "--methods", "random,snip", "--density", "0.5,0.2"]) == 0
    now = _weights(tmp_path / "cmp")
    assert all(now[k] == v for k, v in first.items())
    assert len(now) == 4 and any(k.startswith("snip/") for k in now)


def test_without_a_terminal_each_finished_unit_is_one_line_on_stderr(tmp_path, capsys):
    argv = ["imp", "--data", "digits", "--steps", "10it", "--rounds", "1", "--seeds", "1", "--threads", "1",
            "--controls", "reinit", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ticketlab: [")]
    assert len(lines) == 3                                        # round 0; round 1's ticket and reinit
    assert lines[0].startswith("ticketlab: [1/1] seed 0 round 0 ticket: 100.0% of weights, test accuracy ")
    assert "ETA" in lines[1] and "ETA" not in lines[2] and "[2/2]" in lines[2]


@requires("tensorboard")
def test_log_dir_writes_tensorboard_scalars_equal_to_the_metrics_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = ["imp", *TINY, "--rounds", "0", "--out", str(tmp_path / "run"), "--log-dir", str(tmp_path / "tb")]
    assert main(argv) == 0
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tag = next(t for t in events.Tags()["scalars"] if t.endswith("/test_accuracy"))
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(e.step, round(e.value, 4)) for e in events.Scalars(tag)] == \
        [(r["iteration"], round(r["test_accuracy"], 4)) for r in logged]


def test_the_library_never_imports_tqdm():
    root = Path(__file__).parents[1] / "src" / "ticketlab"
    offenders = []
    for path in root.rglob("*.py"):
        if "cli" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [str(path) for n in names if n.split(".")[0] == "tqdm"]
    assert offenders == []


def test_prune_init_trains_the_dense_baseline_unless_told_not_to(tmp_path):
    base = ["prune-init", *TINY, "--method", "random", "--density", "0.5", "--scope", "layer"]
    assert main([*base, "--out", str(tmp_path / "with")]) == 0
    summary = json.loads((tmp_path / "with" / "summary.json").read_text())
    dense = json.loads((tmp_path / "with" / "seed-0" / "dense" / "result.json").read_text())
    assert dense["density"] == 1.0 and summary["dense_test_accuracy"] == dense["test_accuracy"]
    assert main([*base, "--no-dense", "--out", str(tmp_path / "without")]) == 0
    assert json.loads((tmp_path / "without" / "summary.json").read_text())["dense_test_accuracy"] is None
    assert not (tmp_path / "without" / "seed-0" / "dense").exists()


def test_a_recipe_sets_the_defaults_and_typed_flags_win(tmp_path):
    argv = ["imp", "--recipe", "lenet300-lth", "--data", "digits", "--steps", "10it", "--rounds", "1",
            "--controls", "none", "--lr", "0.002", "--quiet", "--threads", "1", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert (config["data"], config["train"]["steps"], config["train"]["lr"]) == ("digits", "10it", 0.002)  # typed
    assert (config["rate"], config["layer_rates"], config["train"]["batch_size"]) == (0.2, [["output", 0.1]], 60)


def test_a_recipe_for_another_command_is_one_sentence(tmp_path, capsys):
    assert main(["prune-init", "--recipe", "lenet300-lth", "--density", "0.1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ticketlab: error: ") and err.count("\n") == 1 and "imp" in err
    assert not (tmp_path / "r").exists()


@requires("mnist1d")
def test_augmenting_data_that_is_no_image_is_refused_before_the_run_directory(tmp_path, capsys):
    argv = ["imp", "--data", "mnist1d", "--model", "mlp1d", "--augment", "crop-flip", "--steps", "5it",
            "--rounds", "0", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "needs image data" in capsys.readouterr().err and not (tmp_path / "r").exists()
