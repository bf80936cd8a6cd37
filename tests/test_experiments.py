"""Pruning at init, dynamic sparse training and the comparison, end to end on a toy problem."""

import dataclasses
import json

import pytest
import torch

import ticketlab.units.unit as unit_module
from ticketlab import runs, user_code
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.experiments.compare import (CompareConfig, CompareExperiment, imp_round_densities, nearest_round,
                                           run_compare)
from ticketlab.experiments.sparse import PruneInitConfig, SparseConfig, SparseExperiment, SparseTrainConfig, run_sparse
from ticketlab.masks import Mask
from ticketlab.models import _registry, create_model, trust_user_code
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


# --- extending a finished run: keys that appear (Experiment.appearing_keys) ----------------------

def _trained_units(monkeypatch) -> list[dict]:
    """The metrics keys of the units `train_unit` trains from now on (run with stack="off")."""
    trained, real = [], unit_module.train
    monkeypatch.setattr(unit_module, "train", lambda *a, **kw: trained.append(kw["metrics_key"]) or real(*a, **kw))
    return trained


def test_prune_init_gains_its_dense_baseline_training_only_the_dense_units(tmp_path, toy_splits, monkeypatch):
    without = _pai(densities=(0.5,), controls=(), seeds=(0, 1))
    run_sparse(without, tmp_path / "run", data=toy_splits, stack="off")
    ticket = (tmp_path / "run/seed-0/density-0.5/result.json").read_text()
    trained = _trained_units(monkeypatch)
    summary = run_sparse(_pai(densities=(0.5,), controls=(), seeds=(0, 1), dense=True), tmp_path / "run",
                         data=toy_splits, stack="off")
    assert trained == [{"seed": s, "density": 1.0, "run": "dense"} for s in (0, 1)]  # the tickets stay done
    assert (tmp_path / "run/seed-0/density-0.5/result.json").read_text() == ticket
    dense = json.loads((tmp_path / "run/seed-1/dense/result.json").read_text())
    assert dense["density"] == 1.0 and dense["method"] == "dense" and summary["dense_test_accuracy"] is not None
    assert json.loads((tmp_path / "run/config.json").read_text())["config"]["dense"] is True
    with pytest.raises(TicketlabError, match=r"different configuration \(differs in: dense\)"):
        SparseExperiment.prepare(without, tmp_path / "run", data=toy_splits)   # the baseline cannot disappear


def test_appearing_keys_may_appear_but_never_disappear_or_change():
    old = _pai(densities=(0.5,)).to_json()
    assert "dense" not in old and SparseExperiment.extends(old, _pai(densities=(0.5, 0.1), dense=True).to_json())
    assert not SparseExperiment.extends(_pai(densities=(0.5,), dense=True).to_json(), old)
    assert not SparseExperiment.extends(old, {**old, "score_batches": 2})   # not an appearing key
    assert not SparseExperiment.extends(old, {**old, "dense": True, "method": "grasp"})
    pai = CompareConfig(methods=("imp", "snip"), densities=(0.2,)).to_json()
    dst = CompareConfig(methods=("imp", "snip", "set"), densities=(0.2,)).to_json()
    assert not {"update_every", "alpha", "end_fraction"} & set(pai)
    assert CompareExperiment.extends(pai, dst)                         # the DST settings appear with SET
    assert not CompareExperiment.extends(dst, pai)                     # and cannot disappear
    assert not CompareExperiment.extends(dst, {k: v for k, v in dst.items() if k != "alpha"})
    assert not CompareExperiment.extends(dst, {**dst, "alpha": 0.5})   # nor change once stored
    assert CompareExperiment.extends(pai, {**dst, "alpha": 0.5})       # appearing with any value


def test_compare_gains_a_dst_method_training_only_its_cells(tmp_path, toy_splits, monkeypatch):
    first = CompareConfig(methods=("snip",), densities=(0.5,), model="lenet300", data="toy", train=FAST)
    run_compare(first, tmp_path / "cmp", data=toy_splits, stack="off")
    trained = _trained_units(monkeypatch)
    grown = CompareConfig(methods=("snip", "set"), densities=(0.5,), model="lenet300", data="toy", train=FAST,
                          update_every="2it")
    rows = run_compare(grown, tmp_path / "cmp", data=toy_splits, stack="off")["rows"]
    assert trained == [{"seed": 0, "density": 0.5, "run": "ticket"}]   # SET's one cell: snip's stays done
    assert sorted(r["method"] for r in rows) == ["set", "snip"]
    assert json.loads((tmp_path / "cmp/config.json").read_text())["config"]["update_every"] == "2it"
    with pytest.raises(TicketlabError, match="different configuration.*alpha"):
        CompareExperiment.prepare(dataclasses.replace(grown, alpha=0.5), tmp_path / "cmp", data=toy_splits)


# --- run directories: one state per look (ticketlab.runs) -----------------------------------------

def test_claim_reads_the_state_once_before_and_once_under_the_lock(tmp_path, monkeypatch):
    calls = []

    def extends(old, new):
        calls.append((old, new))
        return new["seeds"][: len(old["seeds"])] == old["seeds"]

    out = tmp_path / "run"
    _, lock = runs.claim_run_directory(out, {"seeds": [0]}, kind="toy", extends=extends)
    lock.release()
    written = (out / "config.json").stat().st_mtime_ns
    _, lock = runs.claim_run_directory(out, {"seeds": [0]}, kind="toy", extends=extends)   # the same run
    lock.release()
    assert calls == [] and (out / "config.json").stat().st_mtime_ns == written
    _, lock = runs.claim_run_directory(out, {"seeds": [0, 1]}, kind="toy", extends=extends)
    lock.release()
    assert calls == [({"seeds": [0]}, {"seeds": [0, 1]})] * 2   # before the lock, and under it
    assert json.loads((out / "config.json").read_text()) == {"kind": "toy", "config": {"seeds": [0, 1]}}
    assert runs.check_run_directory(out, {"seeds": [0, 1]}, kind="toy") is True
    assert runs.check_run_directory(tmp_path / "free", {"seeds": [0]}, kind="toy") is False
    foreign = tmp_path / "hf"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(TicketlabError, match="not a ticketlab run's"):
        runs.claim_run_directory(foreign, {"seeds": [0]}, kind="toy")
    assert sorted(p.name for p in foreign.iterdir()) == ["config.json"]   # refused untouched: no lock file


# --- the seed-0 probe and user models: built and checked once ------------------------------------

def test_prepare_builds_the_seed_0_probe_once_for_check_and_threads(tmp_path, toy_splits, monkeypatch):
    saved = torch.get_num_threads()
    built, (info, builder) = [], _registry._REGISTRY["lenet300"]   # every build of lenet300, whoever asks
    counting = (info, lambda *a, **kw: built.append(a) or builder(*a, **kw))
    monkeypatch.setattr(_registry, "_REGISTRY", {**_registry._REGISTRY, "lenet300": counting})
    config = CompareConfig(methods=("imp", "snip", "set"), densities=(0.5,), model="lenet300", data="toy",
                           train=FAST, update_every="2it")
    try:
        experiment = CompareExperiment.prepare(config, tmp_path / "cmp", data=toy_splits, threads=1)
        experiment.release()
    finally:
        torch.set_num_threads(saved)
    assert built == [((12,), 3)] and experiment.threads == 1   # three methods' checks and --threads share one probe


CHECKED_MODEL = '''
from torch import nn

FORWARDS = []


class Counting(nn.Sequential):
    def forward(self, x):
        FORWARDS.append(tuple(x.shape))
        return super().forward(x.flatten(1))


def tiny(input_shape, num_classes):
    return Counting(nn.Linear(input_shape[-1], 4), nn.ReLU(), nn.Linear(4, num_classes))


def bad(input_shape, num_classes):
    return Counting(nn.Linear(input_shape[-1], 4), nn.ReLU(), nn.Linear(4, num_classes + 1))
'''


def test_a_user_model_is_checked_once_per_shape_and_classes(tmp_path, monkeypatch, fresh_trust):
    (tmp_path / "cm_checked_once.py").write_text(CHECKED_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    trust_user_code("cm_checked_once:tiny", "cm_checked_once:bad")
    import cm_checked_once

    for seed in range(4):
        create_model("cm_checked_once:tiny", (6,), 3, seed=seed)
    assert cm_checked_once.FORWARDS == [(2, 6)]                 # one check forward for four builds
    create_model("cm_checked_once:tiny", (6,), 5, seed=0)
    create_model("cm_checked_once:tiny", (7,), 3, seed=0)
    assert cm_checked_once.FORWARDS == [(2, 6), (2, 6), (2, 7)]  # a new (shape, classes) is checked again
    for _ in range(2):   # a failing check is not remembered: refused every time
        with pytest.raises(TicketlabError, match=r"to \(2, 4\), not to logits of shape \(2, 3\)"):
            create_model("cm_checked_once:bad", (6,), 3, seed=0)
    monkeypatch.setattr(user_code, "_TRUSTED", set())
    with pytest.raises(TicketlabError, match="only when this command's own --model names it"):
        create_model("cm_checked_once:tiny", (6,), 3, seed=0)   # checked before, still not trusted now
