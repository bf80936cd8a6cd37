"""Dynamic sparse training (RigL, SET): constant density, zero-started growth, optimiser-state
resets, the cosine schedule, exact RigL growth on a hand-set case, determinism and resume."""

import math

import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.methods.dynamic import DST_METHODS, DSTConfig, MaskUpdater, UpdateSchedule, drop_count
from ticketlab.methods.updaters import UPDATERS, make_updater
from ticketlab.methods.rigl import RigL
from ticketlab.methods.set import SET
from ticketlab.targets import prunable_parameters
from ticketlab.train import TrainConfig, train
from ticketlab.train.optim import build_optimizer

from conftest import Interrupt, interrupt_at, tiny_mlp

METHODS = ("rigl", "set")


def random_mask(model: nn.Module, seed: int = 0, keep: float = 0.4) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(p.shape, generator=g) < keep for n, p in prunable_parameters(model).items()})


def counts(mask: Mask) -> dict[str, int]:
    return {n: int(t.sum()) for n, t in mask.items()}


def clone(mask: Mask) -> Mask:
    return Mask({n: t.clone() for n, t in mask.items()})


# --- schedule and config -----------------------------------------------------------------------

def test_cosine_schedule_hand_computed():
    schedule = UpdateSchedule.resolve(DSTConfig(update_every="10it", alpha=0.3, end_fraction=0.75), 100, 7)
    assert (schedule.every, schedule.end) == (10, 75)
    assert schedule.drop_fraction(0) == pytest.approx(0.3)
    assert schedule.drop_fraction(25) == pytest.approx(0.15 * (1 + 0.5))   # cos(π/3) = 1/2
    assert schedule.drop_fraction(50) == pytest.approx(0.15 * (1 - 0.5))   # cos(2π/3) = -1/2
    assert schedule.drop_fraction(75) == pytest.approx(0.0, abs=1e-12)
    assert schedule.update_iterations() == [10, 20, 30, 40, 50, 60, 70]
    assert not schedule.is_update(0) and not schedule.is_update(75) and not schedule.is_update(80)
    # k = round_half_up(f · n_kept)
    assert drop_count(0.225, 40) == 9 and drop_count(0.075, 10) == 1 and drop_count(0.05, 10) == 1
    assert drop_count(0.04, 10) == 0 and drop_count(1.0, 3) == 3
    # epochs are allowed for ΔT
    assert UpdateSchedule.resolve(DSTConfig(update_every="1ep"), 100, 7).every == 7


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(method="snip"), "rigl, set"),
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=2), "alpha"),
    (dict(end_fraction=0.0), "end-fraction"),
    (dict(end_fraction=1.5), "end-fraction"),
    (dict(update_every="0it"), "update-every"),
    (dict(update_every="often"), "often"),
])
def test_bad_config_is_one_clear_error(kwargs, fragment):
    with pytest.raises(TicketlabError, match=fragment):
        DSTConfig(**kwargs)


def test_config_normalises_and_factory_builds_the_method():
    assert DSTConfig(update_every=50).update_every == "50it"
    assert tuple(UPDATERS) == DST_METHODS      # the registry and the names configs accept agree
    assert isinstance(make_updater(DSTConfig(method="rigl"), seed=0), RigL)
    assert isinstance(make_updater(DSTConfig(method="set"), seed=0), SET)



def test_an_updater_without_a_mask_is_refused(toy_splits):
    with pytest.raises(TicketlabError, match="initial mask"):
        train(tiny_mlp(), toy_splits, TrainConfig(steps="4it", batch_size=20), data_seed=0,
              mask_updater=make_updater(DSTConfig(), seed=0))


# --- one update, by hand -----------------------------------------------------------------------

def _hand_case(grad_of_dropped: float):
    """A 2x4 layer: kept {0, 1, 2, 5}; |θ| of kept: 0.5, 0.1, 0.3, 0.05; a hand-set dense gradient."""
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.1, 0.3, 0.0], [0.0, -0.05, 0.0, 0.0]]))
    mask = Mask({"weight": torch.tensor([[True, True, True, False], [False, True, False, False]])})
    layer.weight.grad = torch.tensor([[0.9, grad_of_dropped, 0.2, -0.7], [0.4, 0.0, -0.8, 0.3]])
    updater = make_updater(DSTConfig(method="rigl"), seed=0)
    bound = mask.bind(layer)
    stats = updater.rewire_(bound, None, 0.5, updater.capture(bound))  # k = round(0.5 · 4) = 2
    return layer, mask, stats


def test_rigl_grows_exactly_the_largest_gradient_inactive_weights():
    layer, mask, stats = _hand_case(grad_of_dropped=0.1)
    # drop the two smallest |θ| (flat 5: 0.05, flat 1: 0.1); grow the two largest |g| among the
    # now-inactive {1, 3, 4, 5, 6, 7}: flat 6 (0.8) and flat 3 (0.7)
    assert mask["weight"].flatten().nonzero().flatten().tolist() == [0, 2, 3, 6]
    assert stats.dropped == 2 and stats.moved == 2
    w = layer.weight.detach().flatten()
    assert w[3] == 0 and w[6] == 0          # grown weights start at exactly zero
    assert w[1] == 0 and w[5] == 0          # dropped weights are zero
    assert w[0] == 0.5 and w[2] == pytest.approx(0.3)


def test_rigl_may_regrow_a_just_dropped_weight_which_keeps_its_value():
    # as in the reference code: growth candidates include the weights dropped in this update
    layer, mask, stats = _hand_case(grad_of_dropped=0.95)
    assert mask["weight"].flatten().nonzero().flatten().tolist() == [0, 1, 2, 6]
    assert stats.dropped == 2 and stats.moved == 1      # flat 1 was dropped and regrown: no net move
    w = layer.weight.detach().flatten()
    assert w[1] == pytest.approx(-0.1) and w[6] == 0 and w[5] == 0


def test_drop_ties_break_deterministically():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.2, 0.2, 0.2, 0.0]]))
    mask = Mask({"weight": torch.tensor([[True, True, True, False]])})
    layer.weight.grad = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    updater = make_updater(DSTConfig(method="rigl"), seed=0)
    bound = mask.bind(layer)
    updater.rewire_(bound, None, 1 / 3, updater.capture(bound))  # k = 1; equal |θ|: the higher index goes
    assert mask["weight"].flatten().tolist() == [True, True, False, True]


@pytest.mark.parametrize("settings", [dict(optimizer="sgd", lr=0.1, momentum=0.9),
                                      dict(optimizer="adam", lr=1e-2)], ids=["sgd-momentum", "adam"])
@pytest.mark.parametrize("method", METHODS)
def test_update_resets_optimizer_state_of_dropped_and_grown_weights(method, settings):
    model = tiny_mlp(seed=1)
    mask = random_mask(model, seed=3)
    optimizer = build_optimizer(model.parameters(), TrainConfig(**settings))
    # dense steps: state becomes non-zero everywhere, pruned entries included, so the test can see
    # that grown entries are reset (in masked training they would be zero already)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(16, 12, generator=torch.Generator().manual_seed(_))).sum().backward()
        optimizer.step()
    bound = mask.bind(model)
    bound.zero_weights_()
    optimizer.zero_grad()
    model(torch.randn(16, 12, generator=torch.Generator().manual_seed(9))).pow(2).sum().backward()
    params = dict(model.named_parameters())
    before_mask = clone(mask)
    before_state = {n: {k: v.clone() for k, v in optimizer.state[params[n]].items() if torch.is_tensor(v) and v.dim()}
                    for n in mask}
    before_weights = {n: params[n].detach().clone() for n in mask}
    updater = make_updater(DSTConfig(method=method), seed=4)
    stats = updater.rewire_(bound, optimizer, 0.3, updater.capture(bound))
    assert stats.moved > 0
    assert counts(mask) == counts(before_mask)
    for name in mask:
        old, new = before_mask[name], mask[name]
        changed, grown = old ^ new, new & ~old
        assert changed.any(), name
        for key, value in before_state[name].items():
            state = optimizer.state[params[name]][key]
            assert torch.count_nonzero(state[changed]) == 0, (name, key)
            assert torch.equal(state[~changed], value[~changed]), (name, key)   # untouched elsewhere
        w = params[name].detach()
        assert torch.count_nonzero(w[grown]) == 0 and torch.count_nonzero(w[~new]) == 0
        assert torch.equal(w[new & old], before_weights[name][new & old])


# --- through the trainer -----------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_density_constant_after_every_update_and_pruned_weights_zero(method, toy_splits):
    model = tiny_mlp(seed=2)
    mask = random_mask(model, seed=1)
    initial, expected = clone(mask), counts(mask)
    params = prunable_parameters(model)
    seen = []

    def check(iteration: int) -> None:
        assert counts(mask) == expected, iteration
        for name, p in params.items():
            assert torch.count_nonzero(p.detach()[~mask[name]]) == 0, (iteration, name)
        seen.append(clone(mask))

    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, steps="40it", batch_size=20, eval_every="20it")
    updater = make_updater(DSTConfig(method=method, update_every="3it", alpha=0.3, end_fraction=0.75), seed=0)
    result = train(model, toy_splits, config, data_seed=0, mask=mask, mask_updater=updater, on_step=check)
    # T_end = 30: updates after 3, 6, ..., 27 steps and never after
    assert result.mask_updates == 9 == len(updater.schedule.update_iterations())
    # seen[i] is the mask after step i + 1
    changes = [i + 1 for i in range(1, 40) if seen[i] != seen[i - 1]]
    assert 3 in changes and set(changes) <= {3, 6, 9, 12, 15, 18, 21, 24, 27}
    assert seen[0] == seen[1] == initial                        # no update before step 3
    assert all(seen[i] == seen[26] for i in range(26, 40))      # nothing moves after step 27 (T_end = 30)
    lost = sum(int((initial[n] & ~mask[n]).sum()) for n in mask)
    assert result.mask_changed_fraction == pytest.approx(lost / initial.num_kept()) and lost > 0


def test_rigl_sees_the_dense_gradient_only_on_update_steps(toy_splits):
    calls = []

    class Spy(RigL):
        def capture(self, bound):
            # pruned entries still carry gradient here: the trainer has not masked it yet
            calls.append(any(bool((p.grad[~bound.mask[n]] != 0).any()) for n, p in zip(bound.mask, bound.params)))
            return super().capture(bound)

    model = tiny_mlp(seed=2)
    config = TrainConfig(steps="20it", batch_size=20, eval_every="20it")
    train(model, toy_splits, config, data_seed=0, mask=random_mask(model),
          mask_updater=Spy(DSTConfig(update_every="5it"), seed=0))
    assert calls == [True, True]  # after steps 5 and 10; T_end = 0.75 · 20 = 15 is excluded


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_by_seed(method, toy_splits):
    def run(seed: int) -> tuple[Mask, dict]:
        model = tiny_mlp(seed=2)
        mask = random_mask(model, seed=1)
        config = TrainConfig(steps="30it", batch_size=20, eval_every="30it")
        train(model, toy_splits, config, data_seed=0, mask=mask,
              mask_updater=make_updater(DSTConfig(method=method, update_every="5it"), seed=seed))
        return mask, model.state_dict()

    (m1, s1), (m2, s2) = run(0), run(0)
    assert m1 == m2 and all(torch.equal(s1[k], s2[k]) for k in s1)
    if method == "set":
        assert run(1)[0] != m1          # the seed drives SET's growth
    # the same updater object reused gives the same run (its generator restarts at its seed)
    updater = make_updater(DSTConfig(method=method, update_every="5it"), seed=0)
    finals = []
    for _ in range(2):
        model = tiny_mlp(seed=2)
        mask = random_mask(model, seed=1)
        train(model, toy_splits, TrainConfig(steps="30it", batch_size=20, eval_every="30it"), data_seed=0,
              mask=mask, mask_updater=updater)
        finals.append(mask)
    assert finals[0] == finals[1] == m1


@pytest.mark.parametrize("method", METHODS)
def test_resume_from_checkpoint_matches_uninterrupted(method, tmp_path, toy_splits):
    config = TrainConfig(optimizer="adam", lr=1e-2, steps="40it", batch_size=20, eval_every="10it")
    dst = DSTConfig(method=method, update_every="3it")
    initial = random_mask(tiny_mlp(), seed=2)
    reference_mask = clone(initial)
    reference = tiny_mlp(seed=3)
    ref = train(reference, toy_splits, config, data_seed=7, mask=reference_mask,
                mask_updater=make_updater(dst, seed=11))

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Interrupt):
        train(tiny_mlp(seed=3), toy_splits, config, data_seed=7, mask=clone(initial),
              mask_updater=make_updater(dst, seed=11), checkpoint_path=ckpt, on_step=interrupt_at(25))
    assert ckpt.exists()
    resumed_model, resumed_mask = tiny_mlp(seed=99), clone(initial)  # everything must come from the checkpoint
    resumed = train(resumed_model, toy_splits, config, data_seed=7, mask=resumed_mask,
                    mask_updater=make_updater(dst, seed=11), checkpoint_path=ckpt)
    assert resumed.evals == ref.evals
    assert resumed_mask == reference_mask
    assert (resumed.mask_updates, resumed.mask_changed_fraction) == (ref.mask_updates, ref.mask_changed_fraction)
    ref_state, new_state = reference.state_dict(), resumed_model.state_dict()
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)


def test_resuming_a_dst_checkpoint_without_the_updater_is_refused(tmp_path, toy_splits):
    config = TrainConfig(steps="40it", batch_size=20, eval_every="10it")

    ckpt = tmp_path / "ckpt.pt"
    mask = random_mask(tiny_mlp())
    with pytest.raises(Interrupt):
        train(tiny_mlp(), toy_splits, config, data_seed=0, mask=clone(mask),
              mask_updater=make_updater(DSTConfig(method="set"), seed=0), checkpoint_path=ckpt, on_step=interrupt_at(15))
    with pytest.raises(TicketlabError, match="mask updater"):
        train(tiny_mlp(), toy_splits, config, data_seed=0, mask=clone(mask), checkpoint_path=ckpt)
    with pytest.raises(TicketlabError, match="'set'"):
        train(tiny_mlp(), toy_splits, config, data_seed=0, mask=clone(mask),
              mask_updater=make_updater(DSTConfig(method="rigl"), seed=0), checkpoint_path=ckpt)


def test_updater_is_a_mask_updater_with_the_common_shape():
    for method in METHODS:
        updater = make_updater(DSTConfig(method=method), seed=0)
        assert isinstance(updater, MaskUpdater) and updater.name == method
        assert updater.state_dict()["method"] == method
    assert math.isclose(UpdateSchedule(10, 100, 0.3).drop_fraction(100), 0.0, abs_tol=1e-12)


@pytest.mark.parametrize("k", [0, 1, 7, 50, 93, 100])
def test_top_k_among_equals_select_on_all_candidates(k):
    from ticketlab.methods.dynamic import top_k_among
    from ticketlab.select import select

    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 5, (10, 20), generator=g).float()  # many ties: the pool must keep them
    candidates = torch.rand(10, 20, generator=g) < 0.5
    candidates.view(-1)[:100] |= True  # at least 100 candidates
    expected = select({"w": scores}, {"w": k}, scope="layer", within=Mask({"w": candidates}))["w"]
    assert torch.equal(top_k_among(scores, candidates, k, "w"), expected)
