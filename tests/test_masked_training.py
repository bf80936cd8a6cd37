"""Masked training: pruned weights stay exactly zero and no optimiser state leaks into them."""

import pytest
import torch

from ticketlab.masks import Mask
from ticketlab.targets import prunable_parameters
from ticketlab.train import TrainConfig, learning_rate, train
from ticketlab.train.schedule import epoch_order, iterations_per_epoch
from ticketlab.train.optim import build_optimizer

from conftest import Interrupt, interrupt_at, tiny_mlp

OPTIMISER_SETTINGS = [
    dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-2),
    dict(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    dict(optimizer="adam", lr=1e-2, weight_decay=1e-2),
    dict(optimizer="adamw", lr=1e-2, weight_decay=1e-1),
]


@pytest.mark.parametrize("settings", OPTIMISER_SETTINGS, ids=lambda s: s["optimizer"] + ("-nesterov" if s.get("nesterov") else ""))
def test_pruned_weights_stay_exactly_zero(settings, toy_splits):
    model = tiny_mlp()
    params = prunable_parameters(model)
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(p.shape, generator=g) > 0.6 for n, p in params.items()})
    before = {n: p.detach().clone() for n, p in params.items()}
    config = TrainConfig(steps="200it", batch_size=20, eval_every="100it", **settings)
    train(model, toy_splits, config, data_seed=0, mask=mask)
    for name, p in params.items():
        assert torch.count_nonzero(p[~mask[name]]) == 0, name
        # kept weights did train
        assert not torch.equal(p[mask[name]], before[name][mask[name]])


def test_optimizer_state_is_masked():
    from ticketlab.train.optim import build_optimizer
    model = tiny_mlp()
    params = prunable_parameters(model)
    mask = Mask({n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) > 0.5 for n, p in params.items()})
    optimizer = build_optimizer(model.parameters(), TrainConfig(optimizer="adam", lr=1e-2))
    # dense steps build up state everywhere; then the mask zeroes the pruned entries' state
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 12)).sum().backward()
        optimizer.step()
    bound = mask.bind(model)
    bound.zero_optimizer_state_(optimizer)
    for name, p in params.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.count_nonzero(optimizer.state[p][key][~mask[name]]) == 0


def test_schedule_warmup_and_drops():
    config = TrainConfig(lr=1.0, steps="100it", warmup="4it", lr_drops=("10it", "1ep"), lr_gamma=0.5)
    assert [learning_rate(config, i, 20) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert learning_rate(config, 10, 20) == 0.5
    assert learning_rate(config, 20, 20) == 0.25


def test_epoch_order_is_a_seeded_permutation(toy_splits):
    a, b = epoch_order(3, 1, 50), epoch_order(3, 1, 50)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(50))
    assert not torch.equal(a, epoch_order(3, 2, 50))
    assert iterations_per_epoch(toy_splits, 60) == 4


def test_training_is_deterministic_and_records_early_stop(toy_splits):
    config = TrainConfig(steps="3ep", batch_size=30, eval_every="4it")
    results = []
    for _ in range(2):
        model = tiny_mlp(seed=5)
        results.append((train(model, toy_splits, config, data_seed=1), model.state_dict()))
    (r1, s1), (r2, s2) = results
    assert r1.evals == r2.evals
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert [e["iteration"] for e in r1.evals] == list(range(0, 25, 4))
    assert r1.early_stop["val_loss"] == min(e["val_loss"] for e in r1.evals)


def test_resume_from_checkpoint_matches_uninterrupted(tmp_path, toy_splits):
    config = TrainConfig(optimizer="sgd", momentum=0.9, lr=0.05, steps="40it", batch_size=20, eval_every="10it")
    mask = Mask({n: torch.rand(p.shape, generator=torch.Generator().manual_seed(2)) > 0.5
                 for n, p in prunable_parameters(tiny_mlp()).items()})
    reference = tiny_mlp(seed=3)
    ref = train(reference, toy_splits, config, data_seed=7, mask=mask)

    model = tiny_mlp(seed=3)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Interrupt):
        train(model, toy_splits, config, data_seed=7, mask=mask, checkpoint_path=ckpt, on_step=interrupt_at(25))
    assert ckpt.exists()
    resumed_model = tiny_mlp(seed=99)  # different init: everything must come from the checkpoint
    resumed = train(resumed_model, toy_splits, config, data_seed=7, mask=mask, checkpoint_path=ckpt)
    assert resumed.evals == ref.evals
    ref_state, new_state = reference.state_dict(), resumed_model.state_dict()
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)


@pytest.mark.parametrize("settings", [dict(optimizer="sgd", lr=0.1), dict(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                                                                           weight_decay=1e-3),
                                      dict(optimizer="adam", lr=1e-2, weight_decay=1e-3), dict(optimizer="adamw", lr=1e-2, weight_decay=0.1)])
def test_fused_optimizer_updates_equal_foreach_up_to_rounding(settings):
    """`build_optimizer` picks the fused kernels on CPU; their updates equal ``foreach``'s up to the
    rounding of contracted multiply-adds, over gradients spanning six orders of magnitude."""
    config = TrainConfig(**settings)
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(30, 20, generator=g), torch.randn(20, generator=g)]
    fused_params = [torch.nn.Parameter(t.clone()) for t in start]
    plain_params = [torch.nn.Parameter(t.clone()) for t in start]
    fused = build_optimizer(fused_params, config)
    assert fused.defaults.get("fused")
    defaults = {k: v for k, v in fused.defaults.items() if k not in ("fused", "foreach", "decoupled_weight_decay")}
    plain = type(fused)(plain_params, **defaults, foreach=True)
    for step in range(25):
        grads = [torch.randn(t.shape, generator=g) * 10 ** -(step % 6) for t in start]
        for params, optimizer in ((fused_params, fused), (plain_params, plain)):
            for p, grad in zip(params, grads):
                p.grad = grad.clone()
            optimizer.step()
    for a, b in zip(fused_params, plain_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
