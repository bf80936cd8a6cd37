"""Stacked training: N networks trained at once each end where they would alone.

Tolerance (stated in `ticketlab.train.stacked`): weights within 1e-5 relative of the sequential
run, evaluations within 1e-4; pruned weights exactly +0.0; stacked runs bit-for-bit repeatable.
"""

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.models import create_model
from ticketlab.runs import MetricsLog
from ticketlab.targets import prunable_parameters
from ticketlab.train import TrainConfig, train
from ticketlab.train.cuda_graph import graph_obstacle, portable_optimizer_state
from ticketlab.train.stacked import StackedJob, resume_iteration, train_stacked
from ticketlab.units import StackSetting, UnitJob, group_size, train_units
from ticketlab.units.group import CPU_STACK_MAX_STEP_MACS, MAX_GROUP
from ticketlab.flops import network_cost

from conftest import Interrupt, assert_close_states, image_splits, interrupt_at, make_splits, needs_cuda, tiny_mlp

RECIPES = {
    "sgd-momentum": TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16, steps="30it", eval_every="10it"),
    "adam-wd": TrainConfig(optimizer="adam", lr=3e-3, weight_decay=1e-3, batch_size=16, steps="30it", eval_every="10it"),
}


def _random_mask(model, density, seed):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return Mask({n: torch.rand(params[n].shape, generator=g) < density for n in prunable_parameters(model)})


def _jobs(build, count, densities=(0.5, 0.3, 1.0), checkpoints: Path | None = None):
    """``count`` masked jobs of ``build(i)``; with ``checkpoints``, job i checkpoints to
    ``checkpoints / ckpt-<i>.safetensors`` (the same path for a fresh set of jobs: they resume)."""
    jobs = []
    for i in range(count):
        model = build(i)
        mask = _random_mask(model, densities[i % len(densities)], seed=100 + i)
        jobs.append(StackedJob(model=model, mask=mask, data_seed=7 + i, metrics_key={"net": i}))
        if checkpoints is not None:
            jobs[-1].checkpoint_path = checkpoints / f"ckpt-{i}.safetensors"
    return jobs


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_stacked_mlps_equal_sequential_and_keep_masks(recipe):
    data, config = make_splits(), RECIPES[recipe]
    stacked_jobs, single_jobs = _jobs(tiny_mlp, 3), _jobs(tiny_mlp, 3)
    stacked_results = train_stacked(stacked_jobs, data, config)
    for s_job, job, s_result in zip(stacked_jobs, single_jobs, stacked_results):
        result = train(job.model, data, config, data_seed=job.data_seed, mask=job.mask)
        assert_close_states(s_job.model.state_dict(), job.model.state_dict())
        assert [e["iteration"] for e in s_result.evals] == [e["iteration"] for e in result.evals] == [0, 10, 20, 30]
        for mine, theirs in zip(s_result.evals, result.evals):
            assert mine["test_accuracy"] == pytest.approx(theirs["test_accuracy"], abs=1e-9 + 100 / 60)
            assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
        params = dict(s_job.model.named_parameters())
        for name, keep in s_job.mask.items():
            pruned = params[name][~keep]
            assert torch.equal(pruned, torch.zeros_like(pruned)) and not torch.signbit(pruned).any()


@pytest.mark.parametrize("name", ["conv2", "resnet20"])
def test_stacked_convnets_equal_sequential(name):
    """Grouped convolutions, pooling, BatchNorm (resnet20) and residual additions."""
    data = image_splits(channels=1)
    build = lambda i: create_model(name, (1, 8, 8), 4, seed=i)  # noqa: E731
    config = TrainConfig(optimizer="sgd", lr=0.02, momentum=0.9, batch_size=16, steps="12it", eval_every="6it")
    stacked_jobs, single_jobs = _jobs(build, 2), _jobs(build, 2)
    train_stacked(stacked_jobs, data, config)
    for s_job, job in zip(stacked_jobs, single_jobs):
        train(job.model, data, config, data_seed=job.data_seed, mask=job.mask)
        assert_close_states(s_job.model.state_dict(), job.model.state_dict(), rtol=1e-4, atol=1e-5)


def test_stacked_training_is_bitwise_repeatable():
    data, config = make_splits(), RECIPES["adam-wd"]
    first, second = _jobs(tiny_mlp, 3), _jobs(tiny_mlp, 3)
    train_stacked(first, data, config)
    train_stacked(second, data, config)
    for a, b in zip(first, second):
        for name, tensor in a.model.state_dict().items():
            assert torch.equal(tensor, b.model.state_dict()[name])


def test_stacked_resume_equals_uninterrupted(tmp_path):
    data, config = make_splits(), RECIPES["adam-wd"]
    whole = _jobs(tiny_mlp, 3)
    train_stacked(whole, data, config)
    jobs = _jobs(tiny_mlp, 3, checkpoints=tmp_path)
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    with pytest.raises(Interrupt):
        train_stacked(jobs, data, config, metrics=metrics, on_step=interrupt_at(15))
    assert [resume_iteration(job.checkpoint_path, 30) for job in jobs] == [10, 10, 10]
    resumed = _jobs(tiny_mlp, 3, checkpoints=tmp_path)  # fresh models: everything must come from the checkpoints
    results = train_stacked(resumed, data, config, metrics=metrics)
    for a, b in zip(whole, resumed):
        for name, tensor in a.model.state_dict().items():
            assert torch.equal(tensor, b.model.state_dict()[name]), name
    assert [e["iteration"] for e in results[0].evals] == [0, 10, 20, 30]
    records = metrics.records()
    assert sorted((r["net"], r["iteration"]) for r in records) == [(n, i) for n in range(3) for i in (0, 10, 20, 30)]


def test_a_stacked_checkpoint_resumes_alone(tmp_path):
    """Network i's checkpoint from a stacked run is an ordinary checkpoint: `train` resumes it."""
    data, config = make_splits(), RECIPES["sgd-momentum"]
    jobs = _jobs(tiny_mlp, 2, checkpoints=tmp_path)
    with pytest.raises(Interrupt):
        train_stacked(jobs, data, config, on_step=interrupt_at(25))
    alone = _jobs(tiny_mlp, 2)[1]
    train(alone.model, data, config, data_seed=alone.data_seed, mask=alone.mask, checkpoint_path=tmp_path / "ckpt-1.safetensors")
    reference = _jobs(tiny_mlp, 2)[1]
    train(reference.model, data, config, data_seed=reference.data_seed, mask=reference.mask)
    assert_close_states(alone.model.state_dict(), reference.model.state_dict())


def test_capture_gives_each_network_its_own_weights():
    data, config = make_splits(), RECIPES["sgd-momentum"]
    seen = {}
    jobs = _jobs(tiny_mlp, 2)
    for i, job in enumerate(jobs):
        job.capture = {5: (lambda model, i=i: seen.setdefault(i, {k: v.clone() for k, v in model.state_dict().items()}))}
    train_stacked(jobs, data, config)
    for i in range(2):
        alone = _jobs(tiny_mlp, 2)[i]
        train(alone.model, data, TrainConfig(**{**config.__dict__, "steps": "5it", "eval_every": "5it"}),
              data_seed=alone.data_seed, mask=alone.mask)
        captured = alone.model.state_dict()
        assert_close_states(seen[i], captured)


def test_augmenting_data_that_is_no_image_is_one_sentence_before_training():
    config = TrainConfig(optimizer="sgd", lr=0.05, batch_size=16, steps="4it", augment="crop-flip")
    with pytest.raises(TicketlabError, match=r"--augment crop-flip needs image data .* use --augment none\.$"):
        train_stacked(_jobs(tiny_mlp, 2), make_splits(), config)


def test_divergence_names_the_network():
    data = make_splits()
    config = TrainConfig(optimizer="sgd", lr=1.0, batch_size=16, steps="10it", eval_every="5it")
    object.__setattr__(config, "lr", 1e30)   # beyond what the config accepts, to force a divergence
    with pytest.raises(TicketlabError, match="Training diverged \\(the loss of net [01] became"):
        train_stacked(_jobs(tiny_mlp, 2), data, config)


# --- units: grouping, the --stack setting -----------------------------------------------------------


def test_auto_group_size_follows_the_per_step_cost():
    config = TrainConfig(batch_size=60, steps="10it")
    digits = make_splits(n_train=60, n_eval=10, features=64, classes=10)
    mnist = make_splits(n_train=60, n_eval=10, features=784, classes=10)
    small = create_model("lenet300", (64,), 10, seed=0)      # 50,200 MACs per example: 3.0M per step
    large = create_model("lenet300", (784,), 10, seed=0)     # 266,200 per example: 16M per step
    cpu = torch.device("cpu")
    assert network_cost(small, (64,)).dense_macs * 60 <= CPU_STACK_MAX_STEP_MACS < network_cost(large, (784,)).dense_macs * 60
    assert group_size(StackSetting("auto"), small, digits, config, cpu) == MAX_GROUP["cpu"] > 1
    assert group_size(StackSetting("auto"), large, mnist, config, cpu) == 1
    assert group_size(StackSetting("auto"), large, mnist, config, torch.device("cuda")) == MAX_GROUP["cuda"] > 1
    assert group_size(StackSetting("off"), small, digits, config, cpu) == 1
    assert group_size(StackSetting(3), large, mnist, config, cpu) == 3


@pytest.mark.parametrize("text", ["0", "-2", "many", "1.5", "2000"])
def test_bad_stack_settings_are_one_sentence(text):
    with pytest.raises(TicketlabError, match="--stack"):
        StackSetting.parse(text)


def _unit_jobs(root, count=3):
    jobs = []
    for i in range(count):
        model = tiny_mlp(i)
        mask = _random_mask(model, (0.5, 0.3, 1.0)[i % 3], seed=100 + i)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        jobs.append(UnitJob(unit_dir=root / f"unit-{i}", model=lambda i=i: tiny_mlp(i), start_state=lambda s=start: s,
                            mask=mask, data_seed=7 + i, metrics_key={"net": i}, label=f"net {i}"))
    return jobs


@pytest.mark.parametrize("stack", ["auto", "off", "2"])
def test_train_units_stores_every_unit_like_train_unit(tmp_path, stack):
    data, config = make_splits(), RECIPES["adam-wd"]
    records = train_units(_unit_jobs(tmp_path / stack), data=data, config=config, device=torch.device("cpu"),
                          metrics=MetricsLog(tmp_path / stack / "metrics.jsonl"), stack=StackSetting.parse(stack))
    reference = train_units(_unit_jobs(tmp_path / "ref"), data=data, config=config, device=torch.device("cpu"),
                            metrics=MetricsLog(tmp_path / "ref" / "metrics.jsonl"), stack=StackSetting("off"))
    for mine, theirs in zip(records, reference):
        assert mine["net"] == theirs["net"] and mine["density"] == theirs["density"]
        assert mine["iterations"] == 30 and mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
        assert mine["trainer"] == ("single" if stack == "off" else "stacked") and theirs["trainer"] == "single"
    for i in range(3):
        assert (tmp_path / stack / f"unit-{i}" / "result.json").exists()
        assert not (tmp_path / stack / f"unit-{i}" / "checkpoint.safetensors").exists()
    again = train_units(_unit_jobs(tmp_path / stack), data=data, config=config, device=torch.device("cpu"),
                        metrics=MetricsLog(tmp_path / stack / "metrics.jsonl"))
    assert again == records  # done units are read back, never retrained


def test_an_interrupted_stacked_group_resumes_to_the_same_units(tmp_path):
    data, config = make_splits(), RECIPES["sgd-momentum"]
    whole = train_units(_unit_jobs(tmp_path / "whole"), data=data, config=config, device=torch.device("cpu"),
                        metrics=MetricsLog(tmp_path / "whole.jsonl"))
    calls = {"n": 0}

    class Bar:
        def update(self, n):
            calls["n"] += n
            if calls["n"] == 25:
                raise Interrupt

        def close(self):
            pass

    with pytest.raises(Interrupt):
        train_units(_unit_jobs(tmp_path / "cut"), data=data, config=config, device=torch.device("cpu"),
                    metrics=MetricsLog(tmp_path / "cut.jsonl"), progress=lambda *a: Bar())
    resumed = train_units(_unit_jobs(tmp_path / "cut"), data=data, config=config, device=torch.device("cpu"),
                          metrics=MetricsLog(tmp_path / "cut.jsonl"))
    for a, b in zip(whole, resumed):
        assert {k: v for k, v in a.items() if k != "wall_time"} == {k: v for k, v in b.items() if k != "wall_time"}
    assert (tmp_path / "whole.jsonl").read_text().count("\n") == (tmp_path / "cut.jsonl").read_text().count("\n")


def test_a_network_ends_with_the_same_bits_in_any_group():
    """Stacked with others, alone, first or last, with a different set: the same bits. LeNet's
    10x100 output layer makes 1,000 x N elements, so without the shadow that follows every group
    the last network meets the scalar tail of the vectorised optimiser step, and differs."""
    data = make_splits(n_train=120, n_eval=30, features=64, classes=10)
    config = TrainConfig(optimizer="adam", lr=3e-3, batch_size=20, steps="12it", eval_every="12it")
    build = lambda i: create_model("lenet300", (64,), 10, seed=i)  # noqa: E731
    full = _jobs(build, 3)
    train_stacked(full, data, config)
    for subset in ([0], [2], [0, 2], [2, 1, 0]):
        jobs = _jobs(build, 3)
        chosen = [jobs[i] for i in subset]
        train_stacked(chosen, data, config)
        for position, index in enumerate(subset):  # the last place included
            for name, tensor in full[index].model.state_dict().items():
                assert torch.equal(tensor, chosen[position].model.state_dict()[name]), (subset, index, name)


def test_graph_obstacles_are_named_and_checkpoints_hold_a_plain_optimizer_state():
    mlp, cuda = tiny_mlp(0), torch.device("cuda")
    assert graph_obstacle(cuda, mlp) is None
    assert "CUDA device" in graph_obstacle(torch.device("cpu"), mlp)
    cumulative = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2, momentum=None))
    assert "'1' keeps a cumulative average" in graph_obstacle(cuda, cumulative)
    assert graph_obstacle(cuda, torch.nn.Sequential(torch.nn.BatchNorm2d(2))) is None
    param = torch.nn.Parameter(torch.ones(3))
    adam = torch.optim.Adam([param], lr=torch.tensor(0.25), capturable=True)
    group = portable_optimizer_state(adam.state_dict())["param_groups"][0]
    assert type(group["lr"]) is float and group["lr"] == 0.25 and group["capturable"] is False
    assert adam.param_groups[0]["capturable"] is True and isinstance(adam.param_groups[0]["lr"], torch.Tensor)
    sgd = torch.optim.SGD([param], lr=0.5, momentum=0.9)
    assert portable_optimizer_state(sgd.state_dict())["param_groups"] == sgd.state_dict()["param_groups"]


@needs_cuda
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_stacked_training_on_cuda_matches_sequential_on_cuda(recipe):
    """The default CUDA path (a replayed CUDA graph, no shadow network) trains what `train` does."""
    data, config = make_splits(), RECIPES[recipe]
    stacked_jobs, single_jobs = _jobs(tiny_mlp, 3), _jobs(tiny_mlp, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture warns
        results = train_stacked(stacked_jobs, data, config, device="cuda")
    for s_job, job, result in zip(stacked_jobs, single_jobs, results):
        train(job.model, data, config, data_seed=job.data_seed, mask=job.mask, device="cuda")
        assert_close_states(s_job.model.state_dict(), {k: v.cpu() for k, v in job.model.state_dict().items()},
                             rtol=1e-4, atol=1e-5)
        assert [e["iteration"] for e in result.evals] == [0, 10, 20, 30]
        params = dict(s_job.model.named_parameters())
        for name, keep in s_job.mask.items():
            assert torch.equal(params[name][~keep], torch.zeros_like(params[name][~keep]))


@needs_cuda
def test_cuda_graph_steps_equal_eager_steps_and_follow_the_schedule():
    """Warm-up (3 eager steps), capture and replays with a learning rate that changes every step
    (warm-up schedule) and drops once: the same weights as eager steps on the same device."""
    data = make_splits()
    config = TrainConfig(optimizer="adam", lr=3e-3, weight_decay=1e-3, batch_size=16, steps="30it",
                         eval_every="10it", warmup="12it", lr_drops=("20it",), lr_gamma=0.1)
    graphed, eager = _jobs(tiny_mlp, 2), _jobs(tiny_mlp, 2)
    train_stacked(graphed, data, config, device="cuda")
    train_stacked(eager, data, config, device="cuda", graphs=False)
    for a, b in zip(graphed, eager):
        assert_close_states(a.model.state_dict(), b.model.state_dict(), rtol=1e-6, atol=1e-7)


@needs_cuda
@pytest.mark.parametrize("name", ["conv2", "resnet20"])
def test_cuda_graph_steps_record_augmentation_and_batchnorm(name, monkeypatch):
    """Crop-and-flip draws are inputs of the recorded step; BatchNorm's running statistics update
    inside it: graphed equals eager and sequential CUDA training.

    Deterministic float32 cuDNN (no TF32) and few steps: a masked ResNet-20 at this learning rate
    is chaotic (on the CPU a 1e-7 relative change of its initial weights moves BatchNorm biases by
    14% after 8 SGD steps), so atomics-order noise and TF32 rounding (1e-3, cuDNN's default for
    convolutions) would otherwise swamp what is compared."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    data = image_splits(channels=1)
    build = lambda i: create_model(name, (1, 8, 8), 4, seed=i)  # noqa: E731
    config = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, batch_size=16, steps="8it", eval_every="4it",
                         augment="crop-flip")
    graphed, eager, single = _jobs(build, 2), _jobs(build, 2), _jobs(build, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        train_stacked(graphed, data, config, device="cuda")
    train_stacked(eager, data, config, device="cuda", graphs=False)
    for a, b, job in zip(graphed, eager, single):
        assert_close_states(a.model.state_dict(), b.model.state_dict(), rtol=1e-5, atol=1e-6)
        train(job.model, data, config, data_seed=job.data_seed, mask=job.mask, device="cuda")
        assert_close_states(a.model.state_dict(), {k: v.cpu() for k, v in job.model.state_dict().items()},
                             rtol=1e-3, atol=1e-4)


@needs_cuda
def test_a_cuda_graphed_run_resumes_and_its_checkpoints_resume_on_the_cpu(tmp_path):
    data, config = make_splits(), RECIPES["adam-wd"]
    jobs = _jobs(tiny_mlp, 2, checkpoints=tmp_path)
    with pytest.raises(Interrupt):
        train_stacked(jobs, data, config, device="cuda", on_step=interrupt_at(25))
    cpu_copy = tmp_path / "cpu.safetensors"
    cpu_copy.write_bytes((tmp_path / "ckpt-1.safetensors").read_bytes())
    resumed = _jobs(tiny_mlp, 2, checkpoints=tmp_path)
    train_stacked(resumed, data, config, device="cuda")
    whole = _jobs(tiny_mlp, 2)
    train_stacked(whole, data, config, device="cuda")
    for a, b in zip(resumed, whole):
        assert_close_states(a.model.state_dict(), b.model.state_dict(), rtol=1e-5, atol=1e-6)
    alone = _jobs(tiny_mlp, 2)[1]   # the graphed checkpoint holds a plain optimiser state
    train(alone.model, data, config, data_seed=alone.data_seed, mask=alone.mask, checkpoint_path=cpu_copy)
    assert_close_states(alone.model.state_dict(), whole[1].model.state_dict(), rtol=1e-4, atol=1e-5)


class _OwnFlatten(nn.Module):
    """A user model that flattens in its own forward: stacked, it would mix the networks."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(12, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x.flatten(1))))


def test_a_model_whose_forward_reshapes_its_input_trains_alone():
    from ticketlab.train.stacking import StackingUnsupported, check_stackable

    data, config = make_splits(), TrainConfig(batch_size=16, steps="4it")
    with pytest.raises(StackingUnsupported, match="stacked forward fails"):
        check_stackable(_OwnFlatten(), data.input_shape)
    assert group_size(StackSetting("auto"), _OwnFlatten(), data, config, torch.device("cpu")) == 1
    check_stackable(tiny_mlp(0), data.input_shape)      # the registry's layouts stack and agree
    assert group_size(StackSetting("auto"), tiny_mlp(0), data, config, torch.device("cpu")) > 1
