"""Pruning at init, dynamic sparse training and the comparison, end to end on a toy problem."""

import json

import pytest
import torch

import ticketlab.units.unit as unit_module
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.compare import CompareConfig, imp_round_densities, nearest_round, run_compare
from ticketlab.experiments.sparse import PruneInitConfig, SparseConfig, SparseExperiment, SparseTrainConfig, run_sparse
from ticketlab.masks import Mask
from ticketlab.models import create_model
from ticketlab.report import format_table
from ticketlab.select import density_to_count
from ticketlab.train import TrainConfig

FAST = TrainConfig(steps="2ep", batch_size=40, eval_every="3it", lr=5e-3)


def _pai(**overrides):
    base = dict(kind="prune-init", method="snip", densities=(0.5, 0.1), model="lenet300", data="toy",
                controls=("shuffle", "reinit", "invert"), score_batch_size=64, train=FAST)
    base.update(overrides)
    return SparseConfig(**base)


def test_prune_init_with_controls(tmp_path, toy_splits):
    summary = run_sparse(_pai(), tmp_path / "run", data=toy_splits)
    assert summary["kind"] == "prune-init" and summary["complete"]
    assert [e["target_density"] for e in summary["rounds"]] == [0.5, 0.1]
    total = sum(t.numel() for t in Mask.load(tmp_path / "run/seed-0/density-0.5/mask.safetensors").values())
    for entry in summary["rounds"]:
        d = entry["target_density"]
        assert entry["density"] == density_to_count(d, total) / total  # exact global count
        assert set(entry["controls"]) == {"shuffle", "reinit", "invert"}
        assert entry["scoring_time"] > 0
        unit = tmp_path / "run/seed-0" / f"density-{d:g}"
        mask = Mask.load(unit / "mask.safetensors")
        shuffled = Mask.load(unit / "controls/shuffle/mask.safetensors")
        inverted = Mask.load(unit / "controls/invert/mask.safetensors")
        assert shuffled.layer_densities() == mask.layer_densities() and shuffled != mask
        assert inverted.num_kept() == mask.num_kept() and inverted != mask
    table = format_table(summary)
    assert "snip acc" in table and "invert acc" in table and "10%" in table


def test_layer_collapse_refused_before_training_or_reported(tmp_path, toy_splits):
    # magnitude at init, globally, at 0.02% (7 weights): the wide middle layer (smallest init scale) vanishes
    config = _pai(method="magnitude", densities=(0.0002,), controls=())
    with pytest.raises(TicketlabError, match="layer collapse.*--allow-collapse"):
        run_sparse(config, tmp_path / "refused", data=toy_splits)
    assert not list((tmp_path / "refused").rglob("result.json"))
    summary = run_sparse(_pai(method="magnitude", densities=(0.0002,), controls=(), allow_collapse=True),
                         tmp_path / "allowed", data=toy_splits)
    assert summary["rounds"][0]["collapsed_layers"]


def test_sparse_train_rigl_and_static_control(tmp_path, toy_splits):
    config = SparseConfig(kind="sparse-train", method="rigl", densities=(0.3,), model="lenet300", data="toy",
                          scope="layer", distribution="erk", controls=("static",), update_every="2it",
                          train=FAST)
    summary = run_sparse(config, tmp_path / "run", data=toy_splits)
    entry = summary["rounds"][0]
    assert entry["mask_updates"] > 0 and 0 < entry["mask_changed_fraction"] <= 1
    unit = tmp_path / "run/seed-0/density-0.3"
    initial, final = Mask.load(unit / "mask.safetensors"), Mask.load(unit / "final_mask.safetensors")
    assert initial != final
    assert {n: int(t.sum()) for n, t in initial.items()} == {n: int(t.sum()) for n, t in final.items()}
    weights = unit_module.load_state(unit / "weights.safetensors")
    assert all(torch.all(weights[n][~final[n]] == 0) for n in final)
    assert entry["controls"]["static"]["density"] == pytest.approx(entry["density"])


def test_compare_writes_tables_and_resumes_without_recomputing(tmp_path, toy_splits, monkeypatch):
    config = CompareConfig(methods=("imp", "snip", "random", "set"), densities=(0.5, 0.2), model="lenet300",
                           data="toy", train=FAST, update_every="2it")
    result = run_compare(config, tmp_path / "cmp", data=toy_splits)
    methods = [r["method"] for r in result["rows"]]
    assert methods.count("dense") == 1 and all(methods.count(m) == 2 for m in ("imp", "snip", "random", "set"))
    for row in result["rows"]:
        assert 0 < row["params_ratio"] <= 1 and 0 < row["flops_ratio"] <= 1
        if row["method"] != "dense":
            assert row["flops_ratio"] < 1
    for name in ("compare.csv", "compare.md", "compare.png", "compare.json"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    assert (tmp_path / "cmp/compare.csv").read_text().splitlines()[0].startswith("method,target_density")

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(unit_module, "train", no_training)
    again = run_compare(config, tmp_path / "cmp", data=toy_splits)
    assert json.dumps(again["rows"], sort_keys=True) == json.dumps(result["rows"], sort_keys=True)


def test_imp_rounds_reach_the_smallest_density():
    config = CompareConfig(methods=("imp",), densities=(0.2, 0.05, 0.01))
    model = create_model("lenet300", (784,), 10, seed=0)
    densities = imp_round_densities(config.sub_configs()["imp"], model, 0.01)
    assert densities[-1] <= 0.01 < densities[-2]
    assert all(a > b for a, b in zip(densities, densities[1:]))
    assert [nearest_round(densities, d) for d in (0.2, 0.05, 0.01)] == [7, 13, 21]


@pytest.mark.parametrize("overrides, message", [
    (dict(method="obd"), "Unknown prune-init method"),
    (dict(densities=(1.0,)), "strictly between 0 and 1"),
    (dict(densities=(0.0,)), "strictly between 0 and 1"),
    (dict(scope="global", distribution="erk"), "applies to --scope layer"),
    (dict(controls=("static",)), "Unknown control"),
])
def test_bad_sparse_configs(overrides, message):
    with pytest.raises(TicketlabError, match=message):
        _pai(**overrides)


def test_sparse_train_refuses_global_scope_and_pai_settings():
    with pytest.raises(TicketlabError, match="--scope layer"):
        SparseTrainConfig(method="rigl", densities=(0.1,), scope="global", distribution="uniform")
    with pytest.raises(TypeError):   # prune-init's settings are not dynamic sparse training's
        SparseTrainConfig(method="rigl", densities=(0.1,), score_batch_size=64)


def test_the_split_configs_write_the_config_json_of_the_one_class_they_replace():
    pai = PruneInitConfig(method="snip", densities=(0.1,))
    assert pai.to_json()["kind"] == "prune-init" and "update_every" not in pai.to_json()
    assert "allow_collapse" in pai.to_json() and SparseConfig(kind="prune-init", method="snip", densities=(0.1,)) == pai
    dst = SparseTrainConfig(method="set", densities=(0.1,))
    assert dst.to_json()["kind"] == "sparse-train" and dst.to_json()["update_every"] == "100it"
    assert not {"allow_collapse", "score_batches", "synflow_double", "width"} & set(dst.to_json())


def test_bad_compare_configs():
    with pytest.raises(TicketlabError, match="Unknown method"):
        CompareConfig(methods=("imp", "magic"))
    with pytest.raises(TicketlabError, match="strictly between"):
        CompareConfig(densities=(0.2, 1.5))


@pytest.mark.parametrize("argv, fragment", [
    (["prune-init", "--density", "1.5"], "strictly between 0 and 1"),
    (["prune-init", "--method", "obd", "--density", "0.1"], "Invalid value for '--method'"),
    (["sparse-train", "--density", "0.1", "--alpha", "2"], "alpha"),
    (["compare", "--methods", "imp,magic"], "Unknown method"),
    (["prune-init", "--density", "0.1", "--scope", "global", "--distribution", "erk"], "applies to --scope layer"),
])
def test_cli_bad_input_is_one_sentence_exit_2(argv, fragment, tmp_path, capsys):
    code = main([*argv, "--data", "digits", "--out", str(tmp_path / "run")])
    _, err = capsys.readouterr()
    assert code == 2 and fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_prune_init_then_report(tmp_path, capsys):
    argv = ["prune-init", "--method", "synflow", "--density", "0.2,0.05", "--synflow-iterations", "10",
            "--data", "digits", "--steps", "1ep", "--controls", "shuffle", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert len(summary["rounds"]) == 2 and (tmp_path / "run/report.png").exists()
    assert main(["report", str(tmp_path / "run")]) == 0
    out, _ = capsys.readouterr()
    assert "synflow acc" in out and "shuffle acc" in out


def test_experiment_refuses_other_config(tmp_path, toy_splits):
    run_sparse(_pai(densities=(0.5,), controls=()), tmp_path / "run", data=toy_splits)
    with pytest.raises(TicketlabError, match="different configuration.*method"):
        SparseExperiment.prepare(_pai(densities=(0.5,), controls=(), method="grasp"), tmp_path / "run", data=toy_splits)
