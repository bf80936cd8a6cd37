"""Early-bird tickets: the stopping rule on hand-made mask sequences, the trainer's stop hook, and
IMP with --early-bird end to end (both ways round 0 can end, late rewinding, resume after kills)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import ticketlab.train.loop as loop_module
from ticketlab.errors import TicketlabError
from ticketlab.lottery import IMPConfig, IMPExperiment, prune_round, run_imp
from ticketlab.lottery.early_bird import (STORE_NAME, EarlyBirdSearch, EarlyBirdState, check_epsilon, first_settled,
                                          mask_distance, window_distance)
from ticketlab.masks import Mask
from ticketlab.train import TrainConfig, train

from conftest import Interrupt, interrupt_at, strip_times, tiny_mlp

FAST = TrainConfig(steps="4ep", batch_size=40, eval_every="2it", lr=5e-3)  # 24 iterations, 13 evaluations


def _mask(bits: str) -> Mask:
    """A one-layer mask from a string of 0/1 (10 positions in these tests)."""
    return Mask({"w": torch.tensor([c == "1" for c in bits]).view(1, -1)})


def test_distance_is_the_fraction_of_positions_that_differ():
    assert mask_distance(_mask("1100000000"), _mask("1010000000")) == pytest.approx(0.2)
    assert mask_distance(_mask("1100000000"), _mask("1100000000")) == 0.0
    # the newest mask against every earlier one, not only its neighbour
    assert window_distance([_mask("1100000000"), _mask("1010000000"), _mask("1001000000")]) == pytest.approx(0.2)
    assert window_distance([_mask("1110000000"), _mask("1100000000"), _mask("1000000000")]) == pytest.approx(0.2)


def test_rule_fires_where_the_hand_made_sequence_says():
    sequence = [_mask(b) for b in (
        "1111100000",  # 0
        "0111110000",  # 1: differs from 0 in 2 positions (0.2)
        "0011111000",  # 2: 0.2 from 1, 0.4 from 0
        "0011111000",  # 3: window (1, 2, 3): 0.2 from 1 -> not below 0.2 (strict)
        "0011111000",  # 4: window (2, 3, 4): all 0 -> fires here with epsilon 0.2, size 3
        "0011111000",  # 5
    )]
    assert first_settled(sequence, epsilon=0.2, size=3) == 4
    assert first_settled(sequence, epsilon=0.21, size=3) == 3  # 0.2 < 0.21
    assert first_settled(sequence, epsilon=0.2, size=4) == 5  # a longer window needs one more mask
    assert first_settled(sequence, epsilon=0.2, size=3, eligible=[i >= 5 for i in range(6)]) == 5
    assert first_settled(sequence[:4], epsilon=0.2, size=3) is None
    # consecutive masks 0.2 apart, drifting: 0.4 between the ends of the window, so never below 0.3
    drifting = [_mask(b) for b in ("1110000000", "0111000000", "0011100000", "0001110000", "0000111000")]
    assert all(mask_distance(a, b) == pytest.approx(0.2) for a, b in zip(drifting, drifting[1:]))
    assert first_settled(drifting, epsilon=0.3, size=3) is None


def test_an_epsilon_that_cannot_fail_is_refused():
    check_epsilon(0.09, 0.05)
    with pytest.raises(TicketlabError, match="can never fail.*below 0.1"):
        check_epsilon(0.1, 0.05)  # two 5% masks differ in at most 10% of the positions
    with pytest.raises(TicketlabError, match="can never fail"):
        check_epsilon(0.4, 0.8)


class Scripted:
    """A ``draw`` that hands out a hand-made mask sequence, one mask per evaluation."""

    def __init__(self, masks: list[Mask]):
        self.masks, self.calls = masks, 0

    def __call__(self, model) -> Mask:
        self.calls += 1
        return self.masks[self.calls - 1]


SEQUENCE = ["1111100000", "0111110000", "0011111000", "0011111000", "0011111000", "0011111000", "0011111000"] + \
    ["0011111000"] * 6  # 13 masks for the 13 evaluations at iterations 0, 2, ..., 24


def test_training_stops_at_the_evaluation_the_sequence_says(tmp_path, toy_splits):
    search = EarlyBirdSearch(tmp_path / STORE_NAME, Scripted([_mask(b) for b in SEQUENCE]), epsilon=0.2, size=3)
    model = tiny_mlp()
    result = train(model, toy_splits, FAST, data_seed=0, on_evaluation=search,
                   checkpoint_path=tmp_path / "checkpoint.safetensors")
    # masks 0..4 are drawn at iterations 0, 2, 4, 6, 8; the rule fires at mask 4
    assert first_settled([_mask(b) for b in SEQUENCE], epsilon=0.2, size=3) == 4
    assert result.final["iteration"] == 8 and [e["iteration"] for e in result.evals] == [0, 2, 4, 6, 8]
    state = EarlyBirdState.load(tmp_path / STORE_NAME)
    assert state.found == 8 and state.iterations == [0, 2, 4, 6, 8]
    assert state.distances[:2] == [None, None] and state.distances[2:] == pytest.approx([0.4, 0.2, 0.0])
    assert state.mask == _mask(SEQUENCE[4])
    # the checkpoint is the previous evaluation's: none is written at the stop
    from ticketlab.train.checkpoint import read_checkpoint
    assert read_checkpoint(tmp_path / "checkpoint.safetensors", total=24).progress.iteration == 6
    # the weights are those of 8 iterations of plain training
    plain = tiny_mlp()
    train(plain, toy_splits, TrainConfig(steps="8it", batch_size=40, eval_every="2it", lr=5e-3), data_seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


def test_the_rule_never_fires_before_the_rewind_point(tmp_path, toy_splits):
    search = EarlyBirdSearch(tmp_path / STORE_NAME, Scripted([_mask(b) for b in SEQUENCE]), epsilon=0.2, size=3,
                             after=10)
    result = train(tiny_mlp(), toy_splits, FAST, data_seed=0, on_evaluation=search)
    assert result.final["iteration"] == 12


def test_without_stop_training_goes_on_and_the_mask_is_kept(tmp_path, toy_splits):
    draw = Scripted([_mask(b) for b in SEQUENCE])
    search = EarlyBirdSearch(tmp_path / STORE_NAME, draw, epsilon=0.2, size=3, stop=False)
    result = train(tiny_mlp(), toy_splits, FAST, data_seed=0, on_evaluation=search)
    assert result.final["iteration"] == 24
    assert draw.calls == 5  # no mask is drawn once the rule has fired
    assert EarlyBirdState.load(tmp_path / STORE_NAME).found == 8


def _config(**overrides):
    base = dict(model="lenet300", data="toy", rounds=2, rate=0.5, controls=("reinit",), seeds=(0, 1),
                train=FAST, early_bird=0.1, dense_accuracy=80.0)
    base.update(overrides)
    return IMPConfig(**base)


def _files(root):
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _same_run(a, b):
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name.endswith(".json"):
            assert strip_times(json.loads(fa[name].read_text())) == strip_times(json.loads(fb[name].read_text())), name
        else:
            assert fa[name].read_bytes() == fb[name].read_bytes(), name


def test_imp_stops_round_0_and_takes_the_early_bird_mask(tmp_path, toy_splits):
    summary = run_imp(_config(), tmp_path / "run", data=toy_splits)
    for seed in (0, 1):
        seed_dir = tmp_path / "run" / f"seed-{seed}"
        state = EarlyBirdState.load(seed_dir / "round-00" / STORE_NAME)
        result = json.loads((seed_dir / "round-00" / "result.json").read_text())
        assert state.found is not None and 0 < state.found < 24
        assert result["iterations"] == state.found  # round 0 stopped there
        mask1 = Mask.load(seed_dir / "round-01" / "mask.safetensors")
        assert mask1 == state.mask
        # the stored mask is IMP's round-1 mask of the weights round 0 stopped with
        weights = load_file(str(seed_dir / "round-00" / "weights.safetensors"))
        model = IMPExperiment.prepare(_config(), tmp_path / "run", data=toy_splits).new_model(seed)
        assert prune_round(_config(), model, Mask.ones_like({n: weights[n] for n in mask1}), weights, 1) == mask1
        assert summary["early_bird"]["seeds"][str(seed)]["stop_iteration"] == state.found
    assert summary["dense_test_accuracy"] == 80.0 and summary["dense_reference"]["source"] == "--dense-accuracy"
    stops = [summary["early_bird"]["seeds"][s]["stop_iteration"] for s in ("0", "1")]
    assert summary["rounds"][0]["cost"]["iterations"] == sum(stops) / 2
    assert summary["rounds"][0]["cost"]["reference_iterations"] == 0


def test_without_a_dense_reference_round_0_trains_on(tmp_path, toy_splits):
    config = _config(dense_accuracy=None)
    summary = run_imp(config, tmp_path / "run", data=toy_splits)
    state = EarlyBirdState.load(tmp_path / "run/seed-0/round-00" / STORE_NAME)
    result = json.loads((tmp_path / "run/seed-0/round-00/result.json").read_text())
    assert result["iterations"] == 24 and state.found is not None and state.found < 24
    assert Mask.load(tmp_path / "run/seed-0/round-01/mask.safetensors") == state.mask
    assert summary["dense_test_accuracy"] == summary["rounds"][0]["test_accuracy"]
    stops = [summary["early_bird"]["seeds"][s]["stop_iteration"] for s in ("0", "1")]
    assert summary["rounds"][0]["cost"]["iterations"] == sum(stops) / 2
    assert summary["rounds"][0]["cost"]["reference_iterations"] == 24 - sum(stops) / 2


def test_late_rewinding_stops_after_the_rewind_point(tmp_path, toy_splits):
    run_imp(_config(seeds=(0,), rewind="16it", rounds=1), tmp_path / "run", data=toy_splits)
    state = EarlyBirdState.load(tmp_path / "run/seed-0/round-00" / STORE_NAME)
    run_imp(_config(seeds=(0,), rounds=1), tmp_path / "plain", data=toy_splits)  # without the rewind point
    assert EarlyBirdState.load(tmp_path / "plain/seed-0/round-00" / STORE_NAME).found < 16 < state.found
    assert (tmp_path / "run/seed-0/rewind.safetensors").exists()
    assert json.loads((tmp_path / "run/seed-0/round-01/result.json").read_text())["iterations"] == 24 - 16


@pytest.mark.parametrize("dense_accuracy", [80.0, None])
def test_resume_after_an_interrupt_in_round_0_equals_an_uninterrupted_run(tmp_path, toy_splits, dense_accuracy):
    config = _config(dense_accuracy=dense_accuracy, seeds=(0,))
    run_imp(config, tmp_path / "ref", data=toy_splits)
    found = EarlyBirdState.load(tmp_path / "ref/seed-0/round-00" / STORE_NAME).found

    calls = {"n": 0}

    class Bar:
        def update(self, n):
            calls["n"] += 1
            if calls["n"] == found - 3:  # round 0, one evaluation before the rule fires
                raise Interrupt

        def close(self):
            pass

    with pytest.raises(Interrupt):
        run_imp(config, tmp_path / "run", data=toy_splits, progress=lambda *args: Bar())
    assert (tmp_path / "run/seed-0/round-00/checkpoint.safetensors").exists()
    assert EarlyBirdState.load(tmp_path / "run/seed-0/round-00" / STORE_NAME).found is None
    run_imp(config, tmp_path / "run", data=toy_splits)
    _same_run(tmp_path / "run", tmp_path / "ref")


def test_a_kill_between_the_mask_file_and_the_checkpoint_is_replayed(tmp_path, toy_splits, monkeypatch):
    """The early-bird file is written before the evaluation's checkpoint: a kill in between leaves
    it one evaluation ahead, and the resumed run, evaluating that iteration again, agrees with it."""
    config = _config(dense_accuracy=None, seeds=(0,))
    run_imp(config, tmp_path / "ref", data=toy_splits)
    real = loop_module.save_checkpoint
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # round 0's checkpoint at iteration 4: the early-bird file already holds 4
            raise Interrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "save_checkpoint", failing)
    with pytest.raises(Interrupt):
        run_imp(config, tmp_path / "run", data=toy_splits)
    assert EarlyBirdState.load(tmp_path / "run/seed-0/round-00" / STORE_NAME).iterations[-1] == 4
    monkeypatch.setattr(loop_module, "save_checkpoint", real)
    run_imp(config, tmp_path / "run", data=toy_splits)
    _same_run(tmp_path / "run", tmp_path / "ref")


def test_a_kill_after_the_stop_before_the_result_is_replayed(tmp_path, toy_splits, monkeypatch):
    """Round 0 stopped (no checkpoint is written at a stop) but was killed before storing its result:
    the resumed run retrains from the last checkpoint and stops at the same evaluation."""
    import ticketlab.units.unit as unit_module

    config = _config(seeds=(0,))
    run_imp(config, tmp_path / "ref", data=toy_splits)
    real = unit_module.save_state

    def failing(model, path):
        if path.name == "weights.safetensors":
            raise Interrupt
        return real(model, path)

    monkeypatch.setattr(unit_module, "save_state", failing)
    with pytest.raises(Interrupt):
        run_imp(config, tmp_path / "run", data=toy_splits)
    state = EarlyBirdState.load(tmp_path / "run/seed-0/round-00" / STORE_NAME)
    assert state.found is not None and state.iterations[-1] == state.found
    monkeypatch.setattr(unit_module, "save_state", real)
    run_imp(config, tmp_path / "run", data=toy_splits)
    _same_run(tmp_path / "run", tmp_path / "ref")


def test_trainer_resume_with_the_hook_gives_the_same_stop(tmp_path, toy_splits):
    def search(path):
        return EarlyBirdSearch(path, lambda m: Mask({"0.weight": m[0].weight.detach().abs() > 0.1}), 0.02, 3)

    reference = tiny_mlp()
    want = train(reference, toy_splits, FAST, data_seed=0, on_evaluation=search(tmp_path / "a.safetensors"))
    assert want.final["iteration"] < 24, "the rule should fire in this test"
    model, ckpt = tiny_mlp(), tmp_path / "checkpoint.safetensors"
    with pytest.raises(Interrupt):
        train(model, toy_splits, FAST, data_seed=0, on_evaluation=search(tmp_path / "b.safetensors"),
              checkpoint_path=ckpt, on_step=interrupt_at(want.final["iteration"] - 1))
    model = tiny_mlp()
    got = train(model, toy_splits, FAST, data_seed=0, on_evaluation=search(tmp_path / "b.safetensors"),
                checkpoint_path=ckpt)
    assert got.evals == want.evals
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


@pytest.mark.parametrize("overrides, message", [
    (dict(early_bird=0.0), "strictly between 0 and 1"),
    (dict(early_bird=-1.0), "strictly between 0 and 1"),
    (dict(early_bird=1.0), "strictly between 0 and 1"),
    (dict(early_bird=float("nan")), "finite"),
    (dict(early_bird_window=1), "at least 2"),
    (dict(early_bird=None, early_bird_window=3), "only with --early-bird"),
    (dict(rounds=0), "at least one pruning round"),
    (dict(dense_accuracy=101.0), "between 0 and 100"),
])
def test_invalid_early_bird_configs(overrides, message):
    with pytest.raises(TicketlabError, match=message):
        _config(**overrides)


def test_an_epsilon_that_cannot_fail_is_refused_before_anything_is_written(tmp_path, toy_splits):
    # one-shot to 5%: two such masks differ in at most 10% of the positions, so 0.2 always passes
    with pytest.raises(TicketlabError, match="can never fail"):
        IMPExperiment.prepare(_config(rate=None, target_density=0.05, rounds=1, early_bird=0.2), tmp_path / "run",
                              data=toy_splits)
    assert not (tmp_path / "run").exists()
