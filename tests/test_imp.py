"""IMP end to end on a toy problem: rewinding, shrinking masks, controls, determinism, resume."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import ticketlab.units.unit as unit_module
from ticketlab.errors import TicketlabError
from ticketlab.lottery import IMPConfig, IMPExperiment, run_imp
from ticketlab.masks import Mask
from ticketlab.train import TrainConfig, train

from conftest import Interrupt, strip_times

FAST = TrainConfig(steps="2ep", batch_size=40, eval_every="3it", lr=5e-3)


def _config(**overrides):
    base = dict(model="lenet300", data="toy", rounds=2, rate=0.5, controls=("reinit", "random", "shuffle"),
                seeds=(0,), train=FAST)
    base.update(overrides)
    return IMPConfig(**base)



def test_rewinding_copies_theta0_and_masks_shrink(tmp_path, toy_splits, monkeypatch):
    starts = []
    real_train = unit_module.train

    def recording_train(model, *args, **kwargs):
        starts.append((kwargs["metrics_key"], {k: v.detach().clone() for k, v in model.state_dict().items()}))
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(unit_module, "train", recording_train)
    summary = run_imp(_config(), tmp_path / "run", data=toy_splits)
    theta0 = load_file(str(tmp_path / "run" / "seed-0" / "init.safetensors"))
    for key, state in starts:
        same = all(torch.equal(state[k], theta0[k]) for k in theta0)
        assert same == (key["run"] != "reinit"), key
    masks = [Mask.load(tmp_path / "run" / "seed-0" / f"round-{r:02d}" / "mask.safetensors") for r in range(3)]
    assert masks[2].is_subset_of(masks[1]) and masks[1].is_subset_of(masks[0])
    # hidden layers lose exactly half of their remaining weights per round, the output layer a quarter
    counts = [[int(m[n].sum()) for n in m] for m in masks]
    names = list(masks[0])
    for r in (1, 2):
        for i, name in enumerate(names):
            rate = 0.25 if i == len(names) - 1 else 0.5
            prev = counts[r - 1][i]
            assert counts[r][i] == prev - int(rate * prev + 0.5), (r, name)
    # every kept weight of round 1 had larger trained magnitude than every pruned survivor of round 0
    trained0 = load_file(str(tmp_path / "run" / "seed-0" / "round-00" / "weights.safetensors"))
    for name in names:
        kept, pruned = trained0[name][masks[1][name]].abs(), trained0[name][~masks[1][name]].abs()
        assert kept.min() >= pruned.max()
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert set(rounds[1]["controls"]) == {"reinit", "random", "shuffle"}
    control_dir = tmp_path / "run" / "seed-0" / "round-02" / "controls"
    for control in ("random", "shuffle"):
        cm = Mask.load(control_dir / control / "mask.safetensors")
        assert cm.layer_densities() == masks[2].layer_densities() and cm != masks[2]
    assert summary["complete"]


@pytest.mark.parametrize("stack", ["auto", "off"])
def test_late_rewinding_saves_theta_k(tmp_path, toy_splits, stack):
    """rewind.safetensors is round 0's state after k iterations, bit for bit, when retrained on the path
    round 0 took (its result.json's ``trainer``): stacked (``--stack auto`` on this tiny model) or alone.
    The two paths agree only up to rounding (fused optimisers round a tensor's tail differently)."""
    run_imp(_config(rounds=1, controls=(), rewind="4it"), tmp_path / "run", data=toy_splits, stack=stack)
    from ticketlab.models import create_model
    from ticketlab.train.stacked import StackedJob, train_stacked
    round0 = json.loads((tmp_path / "run" / "seed-0" / "round-00" / "result.json").read_text())
    assert round0["trainer"] == {"auto": "stacked", "off": "single"}[stack]
    model = create_model("lenet300", toy_splits.input_shape, toy_splits.num_classes, seed=0)
    recipe = TrainConfig(steps="4it", batch_size=40, lr=5e-3)
    if stack == "off":
        train(model, toy_splits, recipe, data_seed=0)
    else:
        train_stacked([StackedJob(model=model, mask=None, data_seed=0)], toy_splits, recipe)
    theta_k = load_file(str(tmp_path / "run" / "seed-0" / "rewind.safetensors"))
    assert all(torch.equal(theta_k[k], v) for k, v in model.state_dict().items())
    result = json.loads((tmp_path / "run" / "seed-0" / "round-01" / "result.json").read_text())
    assert result["iterations"] == 12 - 4


def test_same_seed_same_everything(tmp_path, toy_splits):
    a = run_imp(_config(rounds=1, controls=("shuffle",)), tmp_path / "a", data=toy_splits)
    b = run_imp(_config(rounds=1, controls=("shuffle",)), tmp_path / "b", data=toy_splits)
    assert strip_times(a) == strip_times(b)
    for r in ("round-00", "round-01"):
        assert Mask.load(tmp_path / "a/seed-0" / r / "mask.safetensors") == \
            Mask.load(tmp_path / "b/seed-0" / r / "mask.safetensors")
        wa = load_file(str(tmp_path / "a/seed-0" / r / "weights.safetensors"))
        wb = load_file(str(tmp_path / "b/seed-0" / r / "weights.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a/metrics.jsonl").read_text() == (tmp_path / "b/metrics.jsonl").read_text()


def test_resume_after_interrupt_gives_same_summary(tmp_path, toy_splits):
    config = _config(seeds=(0, 1), controls=("reinit",))
    reference = run_imp(config, tmp_path / "ref", data=toy_splits)

    calls = {"n": 0}

    class Bar:
        def update(self, n):
            calls["n"] += 1
            if calls["n"] == 19:  # in the middle of round 1 (both seeds' tickets and controls, stacked)
                raise Interrupt

        def close(self):
            pass

    def ExplodingProgress():
        return lambda description, total, initial: Bar()

    with pytest.raises(Interrupt):
        run_imp(config, tmp_path / "run", data=toy_splits, progress=ExplodingProgress())
    assert list((tmp_path / "run").rglob("checkpoint.safetensors")), "the interrupted round left a checkpoint"
    done_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("result.json")}
    resumed = run_imp(config, tmp_path / "run", data=toy_splits)
    assert strip_times(resumed) == strip_times(reference)
    # finished units were not recomputed
    assert all(p.stat().st_mtime_ns == t for p, t in done_before.items())
    ref_lines = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    new_lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sorted(ref_lines) == sorted(new_lines)
    assert not list((tmp_path / "run").rglob("checkpoint.safetensors"))


def test_different_config_is_refused_and_nothing_changes(tmp_path, toy_splits):
    """More rounds extend a run (tests/test_cli_generated.py); fewer are another configuration."""
    run_imp(_config(rounds=2, controls=()), tmp_path / "run", data=toy_splits)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(TicketlabError, match="different configuration.*rounds"):
        IMPExperiment.prepare(_config(rounds=1, controls=()), tmp_path / "run", data=toy_splits)
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert before == after


def test_global_scope_prunes_exact_total(tmp_path, toy_splits):
    run_imp(_config(rounds=1, controls=(), scope="global", rate=0.3), tmp_path / "run", data=toy_splits)
    m0 = Mask.load(tmp_path / "run/seed-0/round-00/mask.safetensors")
    m1 = Mask.load(tmp_path / "run/seed-0/round-01/mask.safetensors")
    assert m1.num_kept() == m0.num_kept() - int(0.3 * m0.num_kept() + 0.5)
    assert len(set(round(d, 3) for d in m1.layer_densities().values())) > 1


@pytest.mark.parametrize("overrides, message", [
    (dict(rate=1.0), "strictly between"),
    (dict(rate=0.0), "strictly between"),
    (dict(controls=("bogus",)), "Unknown control"),
    (dict(scope="row"), "Unknown scope"),
    (dict(layer_rates=(("output", 1.5),)), "strictly between"),
    (dict(rewind="5ep"), "rewind"),
])
def test_invalid_configs(overrides, message):
    with pytest.raises(TicketlabError, match=message):
        _config(**overrides)


def test_rewind_beyond_budget_in_other_units(tmp_path, toy_splits):
    with pytest.raises(TicketlabError, match="rewind step"):
        IMPExperiment.prepare(_config(rewind="100it"), tmp_path / "run", data=toy_splits)
    assert not (tmp_path / "run").exists()


# --- cheaper tickets: per-round rates, one-shot to a target density ---------------------------------
def _counts(run, rounds):
    masks = [Mask.load(run / "seed-0" / f"round-{r:02d}" / "mask.safetensors") for r in range(rounds + 1)]
    return [[int(m[n].sum()) for n in m] for m in masks]


def test_rate_schedule_gives_the_hand_computed_counts(tmp_path, toy_splits):
    # lenet300 on the toy data: 3600, 30000 and 300 weights; rates 0.5 then 0.2 (repeating), the
    # output layer at half the round's rate; each layer loses round_half_up(rate * remaining)
    summary = run_imp(_config(rounds=3, rate=(0.5, 0.2), controls=()), tmp_path / "run", data=toy_splits)
    assert _counts(tmp_path / "run", 3) == [[3600, 30000, 300], [1800, 15000, 225], [1440, 12000, 202],
                                            [1152, 9600, 182]]
    assert [r.get("rate") for r in summary["rounds"]] == [None, 0.5, 0.2, 0.2]


def test_target_density_in_two_rounds_global(tmp_path, toy_splits):
    # 33,900 weights, 5% = 1,695. The smallest constant rate p that gets there: round 1 keeps
    # 33900 - round(33900 p) and round 2 prunes round(p * that); p = 26318.5 / 33900 keeps 7,581 then
    # 7581 - round(5885.56) = 1,695, and any smaller p keeps 7,582 or more, which p < 0.77636 cannot
    # bring to 1,695 (7582 - round(7582 p) > 1695)
    summary = run_imp(_config(rounds=2, rate=None, target_density=0.05, scope="global", controls=()),
                      tmp_path / "run", data=toy_splits)
    assert [sum(c) for c in _counts(tmp_path / "run", 2)] == [33900, 7581, 1695]
    assert summary["rounds"][1]["rate"] == pytest.approx(26318.5 / 33900, abs=1e-12)
    assert summary["rounds"][2]["density"] == pytest.approx(0.05)


def test_one_shot_to_a_target_density_with_the_output_at_half_rate(tmp_path, toy_splits):
    summary = run_imp(_config(rounds=1, rate=None, target_density=0.05, controls=()), tmp_path / "run", data=toy_splits)
    p = summary["rounds"][1]["rate"]
    (_, counts), = [_counts(tmp_path / "run", 1)]
    expected = [n - math.floor(r * n + 0.5) for n, r in zip((3600, 30000, 300), (p, p, p / 2))]
    assert counts == expected and sum(counts) <= 1695
    # the next smaller rate would keep more than 5%
    q = math.nextafter(p, 0.0)
    assert sum(n - math.floor(r * n + 0.5) for n, r in zip((3600, 30000, 300), (q, q, q / 2))) > 1695


def test_plain_configs_keep_the_stored_form_of_earlier_runs():
    """A run directory written before cheaper tickets existed must still match its command."""
    stored = _config(rate=0.2).to_json()
    assert stored["rate"] == 0.2 and stored["layer_rates"] == [["output", 0.1]]
    assert not {"target_density", "early_bird", "early_bird_window", "dense_accuracy"} & set(stored)
    assert IMPConfig(**_config().__dict__) == _config()  # the compare runner rebuilds configs this way


@pytest.mark.parametrize("overrides", [dict(rate=(0.5, 0.2)), dict(rate=None, target_density=0.1),
                                       dict(early_bird=0.3), dict(dense_accuracy=90.0)])
def test_a_cheaper_path_on_an_existing_run_is_refused(tmp_path, toy_splits, overrides):
    run_imp(_config(rounds=2, controls=()), tmp_path / "run", data=toy_splits)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(TicketlabError, match="different configuration"):
        IMPExperiment.prepare(_config(rounds=2, controls=(), **overrides), tmp_path / "run", data=toy_splits)
    assert before == {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}


@pytest.mark.parametrize("overrides, message", [
    (dict(rate=()), "at least one rate"),
    (dict(rate=(0.5, 1.0)), "strictly between"),
    (dict(rate=(0.5, float("nan"))), "finite"),
    (dict(rate=(0.5, 0.5, 0.2)), "3 rates for 2 pruning round"),
    (dict(target_density=0.05), "not both"),
    (dict(rate=None, target_density=0.0), "strictly between"),
    (dict(rate=None, target_density=1.0), "strictly between"),
    (dict(rate=None, target_density=0.05, rounds=0), "at least one pruning round"),
])
def test_invalid_schedules(overrides, message):
    with pytest.raises(TicketlabError, match=message):
        _config(**overrides)


def test_an_unreachable_target_density_is_refused_before_anything_is_written(tmp_path, toy_splits):
    # the 30,000-weight layer pruned at its own 10% keeps 79.6% of all weights whatever the rate
    config = _config(rate=None, target_density=0.05, rounds=1, layer_rates=(("layers.3.weight", 0.1),))
    with pytest.raises(TicketlabError, match="cannot be reached in 1 round"):
        IMPExperiment.prepare(config, tmp_path / "run", data=toy_splits)
    assert not (tmp_path / "run").exists()


def test_width_is_stored_only_when_used_and_builds_the_runs_networks(tmp_path, toy_splits):
    assert "width" not in _config().to_json()  # earlier run directories still match their command
    config = _config(width=0.5, rounds=1, controls=())
    assert config.to_json()["width"] == 0.5
    run_imp(config, tmp_path / "run", data=toy_splits)
    weights = load_file(str(tmp_path / "run/seed-0/round-01/weights.safetensors"))
    assert weights["layers.1.weight"].shape == (150, 12) and weights["layers.3.weight"].shape == (50, 150)
    assert json.loads((tmp_path / "run/model.json").read_text())["width"] == 0.5


@pytest.mark.parametrize("overrides", [
    {}, {"rate": (0.5, 0.2), "rounds": 3}, {"target_density": 0.1, "rate": None, "rounds": 2}, {"width": 0.5},
    {"early_bird": 0.1, "dense_accuracy": 95.0, "rewind": "3it"}, {"scope": "global", "ignore": ("output",)},
])
def test_a_config_json_rebuilds_its_config(overrides):
    """`from_json` inverts `to_json` (what `ticketlab stability` reads back from config.json),
    through JSON itself: tuples become lists and come back."""
    config = _config(**overrides)
    assert IMPConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
