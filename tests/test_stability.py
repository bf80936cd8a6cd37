"""Instability analysis: the interpolation path, the barrier, BatchNorm statistics, rewind points
regenerated from θ0, the command end to end with resume, and one-sentence refusals."""

import json
import shutil

import pytest
import torch
from torch import nn

import ticketlab.analysis.stability as stability_module
from ticketlab.analysis.copies import regenerate_rewind_states
from ticketlab.analysis.imp_run import ImpRun
from ticketlab.analysis.interpolation import (alphas, error_barrier, evaluate_path, interpolate_states,
                                             recompute_batchnorm)
from ticketlab.analysis.stability import StabilityConfig, copy_data_seeds, run_stability
from ticketlab.cli import main
from ticketlab.errors import TicketlabError
from ticketlab.lottery import IMPConfig, run_imp
from ticketlab.models import create_model
from ticketlab.train import TrainConfig
from ticketlab.units import load_state

from conftest import tiny_mlp

QUICK_IMP = ["imp", "--model", "lenet300", "--data", "digits", "--rounds", "1", "--rate", "0.5", "--steps", "1ep",
             "--controls", "none", "--quiet"]


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --- the path and the barrier ------------------------------------------------------------------
def test_identical_networks_have_a_barrier_of_exactly_zero(toy_splits):
    state = tiny_mlp(seed=3).state_dict()
    result = evaluate_path(lambda: tiny_mlp(), state, state, 11, (toy_splits.test_x, toy_splits.test_y),
                           toy_splits.train_x, 60)
    assert result.alphas[0] == 0.0 and result.alphas[-1] == 1.0 and len(result.alphas) == 11
    assert len(set(result.errors)) == 1 and len(set(result.losses)) == 1
    assert result.barrier == 0.0


def _two_layer(w1, b1, w2, b2) -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    model.load_state_dict({"0.weight": torch.tensor(w1), "0.bias": torch.tensor(b1),
                           "2.weight": torch.tensor(w2), "2.bias": torch.tensor(b2)})
    return model


def _direct_errors(a, b, points, xs, ys):
    """Test error at each α by hand: interpolate every number, then logits = W2 relu(W1 x + b1) + b2."""
    errors = []
    for i in range(points):
        alpha = i / (points - 1)
        mix = [[[(1 - alpha) * p + alpha * q for p, q in zip(ra, rb)] for ra, rb in zip(ta, tb)]
               if isinstance(ta[0], list) else [(1 - alpha) * p + alpha * q for p, q in zip(ta, tb)]
               for ta, tb in zip(a, b)]
        w1, b1, w2, b2 = mix
        wrong = 0
        for x, y in zip(xs, ys):
            h = [max(0.0, w1[r][0] * x[0] + w1[r][1] * x[1] + b1[r]) for r in range(2)]
            logits = [w2[r][0] * h[0] + w2[r][1] * h[1] + b2[r] for r in range(2)]
            wrong += int((0 if logits[0] >= logits[1] else 1) != y)
        errors.append(100.0 * wrong / len(xs))
    return errors


def test_hand_made_pair_matches_a_direct_computation():
    """A computes relu(x) + bias; B the same function with its hidden units swapped. Halfway between
    them both hidden units average, so the logits tie up to the bias: class 1 points are lost."""
    eye, swap = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]
    a, b = (eye, [0.0, 0.0], eye, [0.1, 0.0]), (swap, [0.0, 0.0], swap, [0.1, 0.0])
    xs = [[2.0, 0.1], [1.0, 0.3], [0.2, 1.5], [0.1, 0.5], [0.5, 0.9], [3.0, 2.0], [0.3, 2.5], [1.0, 1.6]]
    ys = [int(x[1] > x[0]) for x in xs]
    test = (torch.tensor(xs), torch.tensor(ys))
    result = evaluate_path(lambda: _two_layer(*a), _two_layer(*a).state_dict(), _two_layer(*b).state_dict(), 11,
                           test, test[0], 4)
    expected = _direct_errors(a, b, 11, xs, ys)
    assert result.errors == pytest.approx(expected, abs=1e-9)
    assert result.endpoint_errors == (0.0, 0.0) and result.errors[5] == 62.5  # 5 of 8 points are class 1
    assert result.barrier == pytest.approx(max(expected) - (expected[0] + expected[-1]) / 2)
    assert result.barrier == 62.5
    assert error_barrier([3.0, 5.0, 4.0]) == 5.0 - 3.5


def test_masked_weights_stay_zero_along_the_path_and_the_ends_are_exact():
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(5, 7, generator=g) > 0.5
    a = {"w": torch.randn(5, 7, generator=g) * keep, "n": torch.tensor(4)}
    b = {"w": torch.randn(5, 7, generator=g) * keep, "n": torch.tensor(9)}
    for alpha in alphas(7):
        mixed = interpolate_states(a, b, alpha)
        assert torch.all(mixed["w"][~keep] == 0) and int(mixed["n"]) == 4
    assert torch.equal(interpolate_states(a, b, 0.0)["w"], a["w"])
    assert torch.equal(interpolate_states(a, b, 1.0)["w"], b["w"])
    with pytest.raises(TicketlabError):
        interpolate_states(a, {"w": b["w"]}, 0.5)


# --- BatchNorm -------------------------------------------------------------------------------------
def _bn_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_batchnorm_statistics_are_recomputed_on_the_interpolated_network():
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    a, b = _bn_net(0), _bn_net(1)
    for net, shift in ((a, 5.0), (b, -3.0)):  # running statistics far from anything x produces
        net[1].running_mean.fill_(shift)
        net[1].running_var.fill_(9.0)
    mid = _bn_net(2)
    mid.load_state_dict(interpolate_states(a.state_dict(), b.state_dict(), 0.5))
    assert torch.allclose(mid[1].running_mean, torch.full((6,), 1.0))  # the naive lerp of the statistics
    recompute_batchnorm(mid, x, batch_size=20)
    pre = mid[0](x)  # the BatchNorm input; two equal batches of 20
    halves = pre.detach().view(2, 20, 6)
    assert torch.allclose(mid[1].running_mean, halves.mean(1).mean(0), atol=1e-6)
    assert torch.allclose(mid[1].running_var, halves.var(1, unbiased=True).mean(0), atol=1e-6)
    assert mid[1].momentum == 0.1 and not mid.training


def test_batchnorm_recompute_is_a_no_op_without_batchnorm(toy_splits):
    model = tiny_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recompute_batchnorm(model, toy_splits.train_x, 60)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- the analysis on a run -------------------------------------------------------------------------
FAST = TrainConfig(steps="2ep", batch_size=40, eval_every="3it", lr=5e-3)


def test_rewind_points_sources_regeneration_and_resume(tmp_path, toy_splits, monkeypatch):
    """A late-rewinding run: k = 0 is θ0, k = 3 the run's own θk, k = 5 regenerated; regenerating the
    run's own k gives its rewind file bit for bit; a rerun trains nothing."""
    config = IMPConfig(model="lenet300", data="toy", rounds=1, rate=0.5, controls=(), rewind="3it", train=FAST)
    run_imp(config, tmp_path / "run", data=toy_splits)
    run = ImpRun.open(tmp_path / "run")
    assert run.config == config
    build = lambda: create_model("lenet300", (12,), 3, seed=0)  # noqa: E731
    assert run.round_trainer(0, 0) == "stacked"   # --stack auto stacks this tiny model
    regenerated = regenerate_rewind_states([3], build=build, theta0=run.init_state(0), dense_mask=run.mask(0, 0),
                                           data=toy_splits, config=FAST, data_seed=0, trainer="stacked")
    own = load_state(tmp_path / "run" / "seed-0" / "rewind.safetensors")
    assert all(torch.equal(regenerated[3][k], own[k]) for k in own)

    sweep = StabilityConfig(run=str(tmp_path / "run"), round_index=1, points=5, rewind_sweep=("0", "3it", "5it"))
    summary = run_stability(sweep, data=toy_splits)
    assert [(p["rewind"], p["start"]) for p in summary["rewind_points"]] == [
        ("0it", "theta_0"), ("3it", "run"), ("5it", "regenerated")]
    out = tmp_path / "run" / "stability" / "seed-0-round-01"
    mask = run.mask(0, 1)
    for k in (0, 3, 5):
        copies = [load_state(out / f"rewind-{k}it" / f"copy-{i}.safetensors") for i in (0, 1)]
        assert any(not torch.equal(copies[0][name], copies[1][name]) for name in mask)  # two data orders
        for name in mask:
            assert torch.all(copies[0][name][~mask[name]] == 0) and torch.all(copies[1][name][~mask[name]] == 0)
    assert (out / "rewind-5it" / "start.safetensors").exists()
    assert not (out / "rewind-3it" / "start.safetensors").exists()  # the run's own θk is read, not copied
    assert len(set(copy_data_seeds(0))) == 2
    first = (out / "stability.json").read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished rewind point was trained again")

    monkeypatch.setattr(stability_module, "train_copies", refuse)
    monkeypatch.setattr(stability_module, "regenerate_rewind_states", refuse)
    assert run_stability(sweep, data=toy_splits) == summary
    assert (out / "stability.json").read_bytes() == first


@pytest.mark.parametrize("stack, legacy, trainer", [("auto", False, "stacked"), ("off", False, "single"),
                                                    ("auto", True, "stacked")])
def test_regenerated_rewind_points_take_the_path_round_zero_took(tmp_path, toy_splits, stack, legacy, trainer):
    """A regenerated θk is what round 0 passed through, bit for bit, however round 0 was trained: the
    analysis trains it on the recorded path (a run without the record: the one --stack auto takes)."""
    config = IMPConfig(model="lenet300", data="toy", rounds=1, rate=0.5, controls=(), train=FAST)
    run_imp(config, tmp_path / "run", data=toy_splits, stack=stack)
    if legacy:
        result = tmp_path / "run" / "seed-0" / "round-00" / "result.json"
        record = json.loads(result.read_text())
        del record["trainer"]
        result.write_text(json.dumps(record))
    run_stability(StabilityConfig(run=str(tmp_path / "run"), round_index=1, points=3, rewind_sweep=("5it",)),
                  data=toy_splits)
    model = create_model("lenet300", (12,), 3, seed=0)
    from ticketlab.train import train
    from ticketlab.train.stacked import StackedJob, train_stacked
    recipe = TrainConfig(steps="5it", batch_size=40, lr=5e-3)
    if trainer == "single":
        train(model, toy_splits, recipe, data_seed=0)
    else:
        train_stacked([StackedJob(model=model, mask=None, data_seed=0)], toy_splits, recipe)
    start = load_state(tmp_path / "run" / "stability" / "seed-0-round-01" / "rewind-5it" / "start.safetensors")
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())


# --- the command line ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A finished two-round IMP run of LeNet on the digits data (one epoch per round)."""
    root = tmp_path_factory.mktemp("stability") / "run"
    assert main([*QUICK_IMP, "--out", str(root)]) == 0
    return root


def test_command_prints_the_table_and_resumes(digits_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    code, out, err = _run(["stability", str(run), "--round", "1", "--points", "5", "--rewind-sweep", "0,4it"], capsys)
    assert code == 0, err
    result = run / "stability" / "seed-0-round-01"
    summary = json.loads((result / "stability.json").read_text())
    assert [p["iteration"] for p in summary["rewind_points"]] == [0, 4]
    for entry in summary["rewind_points"]:
        assert f"{entry['barrier']:.2f}" in out and entry["barrier"] >= 0 and len(entry["errors"]) == 5
    assert "barrier" in out and (result / "stability.png").stat().st_size > 1000
    # resume: one copy lost, and a new rewind point added -> exactly those are trained
    (result / "rewind-4it" / "copy-1.safetensors").unlink()
    (result / "rewind-4it" / "path.json").unlink()
    trained = []
    real = stability_module.train_copies

    def counting(jobs, **kwargs):
        trained.extend((job.start_iteration, job.data_seed) for job in jobs)
        return real(jobs, **kwargs)

    monkeypatch.setattr(stability_module, "train_copies", counting)
    code, out, err = _run(["stability", str(run), "--round", "1", "--points", "5", "--rewind-sweep", "0,4it,8it",
                           "--quiet"], capsys)
    assert code == 0 and out == "", err
    seeds = copy_data_seeds(0)
    assert sorted(trained) == sorted([(4, seeds[1]), (8, seeds[0]), (8, seeds[1])])
    again = json.loads((result / "stability.json").read_text())
    assert again["rewind_points"][:2] == summary["rewind_points"]  # deterministic on CPU
    # the run's own files were only read
    assert sorted(p.name for p in run.iterdir()) == sorted([*(p.name for p in digits_run.iterdir()), "stability"])


def _late_rewind_copy(digits_run, tmp_path):
    """The digits run, claiming to rewind late, without the rewind weights it would then hold."""
    run = tmp_path / "late"
    shutil.copytree(digits_run, run)
    record = json.loads((run / "config.json").read_text())
    record["config"]["rewind"] = "5it"
    (run / "config.json").write_text(json.dumps(record))
    return run


@pytest.mark.parametrize("args, fragment", [
    (["--round", "3"], "no round 3"),
    (["--round", "1", "--seed", "4"], "no seed 4"),
    (["--round", "1", "--points", "2"], "--points"),
    (["--round", "1", "--rewind-sweep", "0,soon"], "Cannot read step"),
    (["--round", "1", "--rewind-sweep", "0,10"], "no unit"),
    (["--round", "1", "--rewind-sweep", ","], "at least one"),
    (["--round", "1", "--rewind-sweep", "0,1ep"], "not before the end"),
    (["--round", "1", "--rewind-sweep", "500it"], "not before the end"),
    (["--round", "1", "--rewind-sweep", "0,0"], "twice"),
    (["--round", "1", "--rewind-sweep", "4it,0,4it"], "twice"),
    (["--round", "1", "--rewind-sweep", "0it,0"], "twice"),
    (["--round", "1", "--bn-examples", "99999999999999999999999"], "--bn-examples"),
    (["--round", "1", "--bn-examples", "0"], "--bn-examples"),
    (["--round", "1", "--model", "mymodels:tiny"], "registered model 'lenet300'"),
    (["--round", "1", "--data", "mydata:load"], "registered data 'digits'"),
    ("late", "no rewind weights"),
    ("missing", "does not exist"),
    ("not-imp", "not an IMP run"),
])
def test_bad_input_is_one_sentence_exit_2_and_writes_nothing(digits_run, tmp_path, capsys, args, fragment):
    run = digits_run
    if args == "late":
        run, args = _late_rewind_copy(digits_run, tmp_path), ["--round", "1"]
    elif args == "missing":
        run, args = tmp_path / "nothing", ["--round", "0"]
    elif args == "not-imp":
        run, args = tmp_path, ["--round", "0"]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = _run(["stability", str(run), *args, "--out", str(tmp_path / "out")], capsys)
    assert code == 2, err
    assert fragment.lower() in err.lower() and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (digits_run / "stability").exists()


def test_an_analysis_of_another_configuration_is_not_overwritten(digits_run, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["stability", str(digits_run), "--round", "0", "--out", str(out), "--quiet", "--points", "3"]
    assert _run(base, capsys)[0] == 0
    before = (out / "stability.json").read_bytes()
    code, _, err = _run([*base[:-1], "4"], capsys)
    assert code == 2 and "different configuration" in err and len(err.strip().splitlines()) == 1
    assert (out / "stability.json").read_bytes() == before


def test_config_validation():
    with pytest.raises(TicketlabError, match="--points"):
        StabilityConfig(run="r", round_index=0, points=2)
    with pytest.raises(TicketlabError, match="--round"):
        StabilityConfig(run="r", round_index=-1)
    with pytest.raises(TicketlabError, match="at least one"):
        StabilityConfig(run="r", round_index=0, rewind_sweep=())
    assert StabilityConfig(run="r", round_index=0, rewind_sweep=("0", "2ep")).rewind_sweep[1].unit == "ep"


def test_prepare_sizes_threads_with_the_network_it_built(digits_run, tmp_path, monkeypatch):
    """``threads`` is sized by LeNet-300-100's step on digits: 60 x (64*300 + 300*100 + 100*10)
    MACs; no threads leaves torch's setting alone; a bad count is one sentence."""
    from ticketlab.analysis.stability import StabilityAnalysis

    seen = []
    monkeypatch.setattr(stability_module, "use_threads", lambda value, macs: seen.append((value, macs)) or 1)
    config = StabilityConfig(run=str(digits_run), round_index=1)
    analysis = StabilityAnalysis.prepare(config, out=tmp_path / "out", threads="auto")
    assert seen == [("auto", 60 * (64 * 300 + 300 * 100 + 100 * 10))] and analysis.threads == 1
    assert StabilityAnalysis.prepare(config, out=tmp_path / "out").threads is None and len(seen) == 1
    monkeypatch.undo()
    with pytest.raises(TicketlabError, match="--threads"):
        StabilityAnalysis.prepare(config, out=tmp_path / "out", threads="many")
    assert not (tmp_path / "out").exists()
