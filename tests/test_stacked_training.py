"""Stacked training: N networks trained at once each end where they would alone.

Tolerance (stated in `ticketlab.train.stacked`): weights within 1e-5 relative of the sequential
run, evaluations within 1e-4; pruned weights exactly +0.0; stacked runs bit-for-bit repeatable.
"""

import pytest
import torch

from ticketlab.masks import Mask
from ticketlab.models import create_model
from ticketlab.runs import MetricsLog
from ticketlab.targets import prunable_parameters
from ticketlab.train import TrainConfig, train
from ticketlab.train.stacked import StackedJob, resume_iteration, train_stacked

from conftest import Interrupt, interrupt_at, make_splits, tiny_mlp

RECIPES = {
    "sgd-momentum": TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16, steps="30it", eval_every="10it"),
    "adam-wd": TrainConfig(optimizer="adam", lr=3e-3, weight_decay=1e-3, batch_size=16, steps="30it", eval_every="10it"),
}


def _random_mask(model, density, seed):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return Mask({n: torch.rand(params[n].shape, generator=g) < density for n in prunable_parameters(model)})


def _jobs(build, count, densities=(0.5, 0.3, 1.0)):
    jobs = []
    for i in range(count):
        model = build(i)
        mask = _random_mask(model, densities[i % len(densities)], seed=100 + i)
        jobs.append(StackedJob(model=model, mask=mask, data_seed=7 + i, metrics_key={"net": i}))
    return jobs


def _assert_close_states(a, b, rtol=1e-5, atol=1e-6):
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_stacked_mlps_equal_sequential_and_keep_masks(recipe):
    data, config = make_splits(), RECIPES[recipe]
    stacked_jobs, single_jobs = _jobs(tiny_mlp, 3), _jobs(tiny_mlp, 3)
    stacked_results = train_stacked(stacked_jobs, data, config)
    for s_job, job, s_result in zip(stacked_jobs, single_jobs, stacked_results):
        result = train(job.model, data, config, data_seed=job.data_seed, mask=job.mask)
        _assert_close_states(s_job.model.state_dict(), job.model.state_dict())
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
    data = make_splits(n_train=96, n_eval=32, features=1 * 8 * 8, classes=4)
    data = data.__class__(**{**data.__dict__, "input_shape": (1, 8, 8),
                             **{k: getattr(data, k).view(-1, 1, 8, 8) for k in ("train_x", "val_x", "test_x")}})
    build = lambda i: create_model(name, (1, 8, 8), 4, seed=i)  # noqa: E731
    config = TrainConfig(optimizer="sgd", lr=0.02, momentum=0.9, batch_size=16, steps="12it", eval_every="6it")
    stacked_jobs, single_jobs = _jobs(build, 2), _jobs(build, 2)
    train_stacked(stacked_jobs, data, config)
    for s_job, job in zip(stacked_jobs, single_jobs):
        train(job.model, data, config, data_seed=job.data_seed, mask=job.mask)
        _assert_close_states(s_job.model.state_dict(), job.model.state_dict(), rtol=1e-4, atol=1e-5)


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
    jobs = _jobs(tiny_mlp, 3)
    for i, job in enumerate(jobs):
        job.checkpoint_path = tmp_path / f"ckpt-{i}.safetensors"
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    with pytest.raises(Interrupt):
        train_stacked(jobs, data, config, metrics=metrics, on_step=interrupt_at(15))
    assert [resume_iteration(job, 30) for job in jobs] == [10, 10, 10]
    resumed = _jobs(tiny_mlp, 3)  # fresh models: everything must come from the checkpoints
    for i, job in enumerate(resumed):
        job.checkpoint_path = tmp_path / f"ckpt-{i}.safetensors"
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
    jobs = _jobs(tiny_mlp, 2)
    for i, job in enumerate(jobs):
        job.checkpoint_path = tmp_path / f"ckpt-{i}.safetensors"
    with pytest.raises(Interrupt):
        train_stacked(jobs, data, config, on_step=interrupt_at(25))
    alone = _jobs(tiny_mlp, 2)[1]
    train(alone.model, data, config, data_seed=alone.data_seed, mask=alone.mask, checkpoint_path=tmp_path / "ckpt-1.safetensors")
    reference = _jobs(tiny_mlp, 2)[1]
    train(reference.model, data, config, data_seed=reference.data_seed, mask=reference.mask)
    _assert_close_states(alone.model.state_dict(), reference.model.state_dict())


def test_capture_gives_each_network_its_own_weights():
    data, config = make_splits(), RECIPES["sgd-momentum"]
    seen = {}
    jobs = _jobs(tiny_mlp, 2)
    for i, job in enumerate(jobs):
        job.capture = {5: (lambda model, i=i: seen.setdefault(i, {k: v.clone() for k, v in model.state_dict().items()}))}
    train_stacked(jobs, data, config)
    for i in range(2):
        alone = _jobs(tiny_mlp, 2)[i]
        captured = {}
        train(alone.model, data, TrainConfig(**{**config.__dict__, "steps": "5it", "eval_every": "5it"}),
              data_seed=alone.data_seed, mask=alone.mask)
        captured = alone.model.state_dict()
        _assert_close_states(seen[i], captured)


def test_divergence_names_the_network():
    data = make_splits()
    config = TrainConfig(optimizer="sgd", lr=1e30, batch_size=16, steps="10it", eval_every="5it")
    with pytest.raises(Exception, match="net 0|net 1"):
        train_stacked(_jobs(tiny_mlp, 2), data, config)
