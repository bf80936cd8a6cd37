"""Pruning at initialisation: SNIP, GraSP, SynFlow, magnitude and random behind `prune_at_init`.

Golden values come from independent computations on hand-sized networks (closed-form gradients for
SNIP, `torch.autograd.functional.hvp` for GraSP, path-norm products for SynFlow); the generic tests
run every method in `PAI_METHODS` through the same checks (exact density, model untouched, errors).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.densities import DISTRIBUTIONS, layer_keep_counts
from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.methods import SCORERS, ScoringContext
from ticketlab.methods.grasp import grasp_scores
from ticketlab.methods.pai import PAI_METHODS, prune_at_init
from ticketlab.methods.snip import snip_scores
from ticketlab.methods.synflow import synflow_scores
from ticketlab.models import create_model
from ticketlab.select import density_to_count, select
from ticketlab.targets import prunable_parameters

D = torch.float64
W1 = torch.tensor([[0.5, -1.0, 0.25], [-0.75, 0.5, 1.0]], dtype=D)
B1 = torch.tensor([0.1, -0.2], dtype=D)
W2 = torch.tensor([[1.0, -0.5], [0.25, 0.75]], dtype=D)
B2 = torch.tensor([0.0, 0.1], dtype=D)
XA = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 2.0], [-1.0, 0.5, 0.5]], dtype=D)
YA = torch.tensor([0, 1, 1])
XB = torch.tensor([[2.0, -0.5, 1.0], [0.0, 1.0, -1.5]], dtype=D)
YB = torch.tensor([1, 0])


def hand_net(w1=W1, b1=B1, w2=W2, b2=B2) -> nn.Sequential:
    """``Linear(3, 2) -> ReLU -> Linear(2, 2)`` in float64 with the given weights."""
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)).to(D)
    with torch.no_grad():
        net[0].weight.copy_(w1), net[0].bias.copy_(b1), net[2].weight.copy_(w2), net[2].bias.copy_(b2)
    return net


def weights_of(net: nn.Module) -> dict[str, nn.Parameter]:
    return {"0.weight": net[0].weight, "2.weight": net[2].weight}


def flat(scores) -> torch.Tensor:
    return torch.cat([s.flatten() for s in scores.values()])


def forward(x, w1, b1, w2, b2, temperature=1.0):
    return (torch.relu(x @ w1.T + b1) @ w2.T + b2) / temperature


# --- SNIP -----------------------------------------------------------------------------------------
def closed_form_grads(x, y, w1=W1, b1=B1, w2=W2, b2=B2):
    """∂L/∂W1, ∂L/∂W2 of the mean cross-entropy, written out by hand (no autograd)."""
    pre = x @ w1.T + b1
    h = pre.clamp(min=0)
    p = torch.softmax(h @ w2.T + b2, dim=1)
    delta = (p - F.one_hot(y, 2).to(D)) / len(y)             # (N, 2): ∂L/∂logits
    dw2 = delta.T @ h
    dpre = (delta @ w2) * (pre > 0).to(D)
    return dpre.T @ x, dw2


def test_snip_matches_hand_computed_sensitivity_summed_over_batches():
    net = hand_net()
    ga1, ga2 = closed_form_grads(XA, YA)
    gb1, gb2 = closed_form_grads(XB, YB)
    scores = snip_scores(net, weights_of(net), ScoringContext(batches=((XA, YA), (XB, YB))))
    torch.testing.assert_close(scores["0.weight"], ((ga1 + gb1) * W1).abs(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(scores["2.weight"], ((ga2 + gb2) * W2).abs(), rtol=1e-12, atol=1e-15)
    # one batch only: just that batch's sensitivity
    one = snip_scores(net, weights_of(net), ScoringContext(batches=((XA, YA),)))
    torch.testing.assert_close(one["0.weight"], (ga1 * W1).abs(), rtol=1e-12, atol=1e-15)
    # and the mask is the global top-k of those scores
    mask = prune_at_init(net, weights_of(net), 0.4, method="snip", context=ScoringContext(batches=((XA, YA),)))
    expected = torch.cat([(ga1 * W1).abs().flatten(), (closed_form_grads(XA, YA)[1] * W2).abs().flatten()])
    kept = torch.cat([mask["0.weight"].flatten(), mask["2.weight"].flatten()])
    assert int(kept.sum()) == 4 and expected[kept].min() > expected[~kept].max()


# --- GraSP ----------------------------------------------------------------------------------------
def independent_grasp_keep_scores(net: nn.Sequential, batches, temperature: float) -> torch.Tensor:
    """θ ⊙ Hg by torch.autograd.functional.hvp on a hand-written loss, flattened (W1 then W2)."""
    b1, b2 = net[0].bias.detach(), net[2].bias.detach()
    theta = (net[0].weight.detach().clone(), net[2].weight.detach().clone())

    def loss_fn(x, y):
        return lambda w1, w2: F.cross_entropy(forward(x, w1, b1, w2, b2, temperature), y)

    leaves = tuple(t.clone().requires_grad_(True) for t in theta)
    g = [torch.zeros_like(t) for t in theta]
    for x, y in batches:
        for acc, part in zip(g, torch.autograd.grad(loss_fn(x, y)(*leaves), leaves)):
            acc += part
    hg = [torch.zeros_like(t) for t in theta]
    for x, y in batches:
        _, parts = torch.autograd.functional.hvp(loss_fn(x, y), theta, tuple(g))
        for acc, part in zip(hg, parts):
            acc += part
    return torch.cat([(t * h).flatten() for t, h in zip(theta, hg)])


@pytest.mark.parametrize("temperature", [200.0, 1.0])
def test_grasp_keep_score_is_theta_times_hessian_gradient(temperature):
    net = hand_net()
    batches = ((XA, YA), (XB, YB))
    scores = grasp_scores(net, weights_of(net), ScoringContext(batches=batches, grasp_temperature=temperature))
    expected = independent_grasp_keep_scores(net, batches, temperature)
    assert expected.abs().max() > 0
    torch.testing.assert_close(flat(scores), expected, rtol=1e-9, atol=1e-18)


def test_grasp_removes_the_largest_grasp_scores_so_the_sign_decides():
    """Pruning one weight must remove argmax(-θ⊙Hg): not the smallest |score|, not the largest keep-score."""
    g = torch.Generator().manual_seed(3)
    net = hand_net(*(torch.randn(s, generator=g, dtype=D) for s in ((2, 3), (2,), (2, 2), (2,))))
    context = ScoringContext(batches=((XA, YA),))
    keep_scores = independent_grasp_keep_scores(net, ((XA, YA),), 200.0)
    grasp_paper = -keep_scores                       # the paper's S = -θ ⊙ Hg; the largest S is removed
    removed = int(grasp_paper.argmax())
    # precondition: a rule on |score| or with the opposite sign would remove a different weight
    assert removed != int(keep_scores.abs().argmin()) and removed != int(keep_scores.argmax())
    assert keep_scores[removed] < 0
    mask = prune_at_init(net, weights_of(net), 0.9, method="grasp", context=context)
    kept = torch.cat([mask["0.weight"].flatten(), mask["2.weight"].flatten()])
    assert int((~kept).sum()) == 1 and not kept[removed]
    # every removed weight has a GraSP score at least as large as every kept one
    mask = prune_at_init(net, weights_of(net), 0.5, method="grasp", context=context)
    kept = torch.cat([mask["0.weight"].flatten(), mask["2.weight"].flatten()])
    assert grasp_paper[~kept].min() >= grasp_paper[kept].max()


# --- SynFlow --------------------------------------------------------------------------------------
def path_norm_scores(m1=None, m2=None, w1=W1, b1=B1, w2=W2) -> dict[str, torch.Tensor]:
    """SynFlow by hand for Linear(3,2) -> ReLU -> Linear(2,2) on input ones(1, 3), masked by m1, m2.

    R = Σ_i (Σ_j |W2_ij| h_j + |b2_i|) with h_j = Σ_k |W1_jk| + |b1_j|, so
    score(W1_jk) = |W1_jk| Σ_i |W2_ij| and score(W2_ij) = |W2_ij| h_j.
    """
    a1 = w1.abs() * (1 if m1 is None else m1)
    a2 = w2.abs() * (1 if m2 is None else m2)
    h = a1.sum(dim=1) + b1.abs()
    return {"0.weight": a1 * a2.sum(dim=0)[:, None], "2.weight": a2 * h[None, :]}


def test_synflow_scores_are_path_norm_products_and_ignore_data():
    net = hand_net()
    expected = path_norm_scores()
    for context in (ScoringContext(input_shape=(3,)), ScoringContext(batches=((XA, YA),)),
                    ScoringContext(batches=((XB * 100, YB),), input_shape=(3,))):
        scores = synflow_scores(net, weights_of(net), context)
        for name in expected:
            torch.testing.assert_close(scores[name], expected[name], rtol=1e-12, atol=0)
    m1 = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    m2 = torch.tensor([[0, 1], [1, 1]], dtype=torch.bool)
    masked = synflow_scores(net, weights_of(net), ScoringContext(input_shape=(3,)), mask={"0.weight": m1, "2.weight": m2})
    for name, value in path_norm_scores(m1.to(D), m2.to(D)).items():
        torch.testing.assert_close(masked[name], value, rtol=1e-12, atol=0)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_iterative_synflow_follows_the_exponential_schedule(scope):
    """Independent loop: K rounds, density ρ^(k/K), path-norm scores of the masked net, select within."""
    net, density, rounds = hand_net(), 0.3, 4
    shapes = {"0.weight": (2, 3), "2.weight": (2, 2)}
    mask = Mask.ones_like(path_norm_scores())
    for k in range(1, rounds + 1):
        d = density ** (k / rounds)
        keep = density_to_count(d, 10) if scope == "global" else layer_keep_counts(shapes, d, "uniform")
        scores = path_norm_scores(mask["0.weight"].to(D), mask["2.weight"].to(D))
        mask = select(scores, keep, scope=scope, within=mask)
    for context in (ScoringContext(input_shape=(3,)), ScoringContext(batches=((XA, YA),)),
                    ScoringContext(batches=((XB, YB),), synflow_double=True)):
        got = prune_at_init(net, weights_of(net), density, method="synflow", scope=scope, context=context,
                            synflow_iterations=rounds)
        assert got == mask


def test_synflow_double_precision_gives_float64_scores_of_the_same_values():
    model = create_model("lenet300", (1, 4, 4), 10, seed=0)
    params = prunable_parameters(model)
    single = synflow_scores(model, params, ScoringContext())
    double = synflow_scores(model, params, ScoringContext(synflow_double=True))
    for name in params:
        assert single[name].dtype == torch.float32 and double[name].dtype == torch.float64
        torch.testing.assert_close(single[name].double(), double[name], rtol=1e-4, atol=0)


def test_synflow_reports_overflow_instead_of_ranking_infinities():
    net = nn.Sequential(*[nn.Linear(8, 8) for _ in range(30)])
    with torch.no_grad():
        for layer in net:
            layer.weight.fill_(1e3)
    params = {f"{i}.weight": layer.weight for i, layer in enumerate(net)}
    with pytest.raises(TicketlabError, match="double precision"):
        synflow_scores(net, params, ScoringContext(input_shape=(8,)))
    synflow_scores(net, params, ScoringContext(input_shape=(8,), synflow_double=True))  # 1e90: fine in float64


# --- generic: every method ------------------------------------------------------------------------
class BNNet(nn.Module):
    """Conv(2->4) + BN + ReLU -> avg pool -> Linear(4->3): the smallest net with BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            self.bn.running_mean.copy_(torch.randn(4, generator=g))  # negative entries: abs must not leak
            self.bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
            self.bn.num_batches_tracked.fill_(7)
            self.conv.weight[0, 0, 0, 0] = -0.0                       # a signed zero must survive too
        self.input_shape = (2, 5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def bn_batches(n: int = 2) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    g = torch.Generator().manual_seed(1)
    return tuple((torch.randn(6, 2, 5, 5, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(n))


def context_for(seed: int = 0, **kwargs) -> ScoringContext:
    return ScoringContext(generator=torch.Generator().manual_seed(seed), batches=bn_batches(), **kwargs)


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "signbits": {k: torch.signbit(v) for k, v in model.state_dict().items() if v.is_floating_point()},
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
        if key in before["signbits"]:
            assert torch.equal(before["signbits"][key], after["signbits"][key]), key
    assert before["modes"] == after["modes"] and before["requires_grad"] == after["requires_grad"]
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)


@pytest.mark.parametrize("method", PAI_METHODS)
def test_model_is_left_exactly_as_found(method):
    model = BNNet()
    model.train()
    model.fc.eval()                              # mixed modes must come back as they were
    model.conv.bias.requires_grad_(False)       # so must requires_grad flags ...
    model.fc.weight.requires_grad_(False)
    model.conv.weight.grad = torch.full_like(model.conv.weight, 0.5)  # ... and existing gradients
    params = prunable_parameters(model)
    before = snapshot(model)
    for invert in (False, True):
        with torch.no_grad():                    # scorers must work inside a caller's no_grad too
            mask = prune_at_init(model, params, 0.3, method=method, context=context_for(), invert=invert,
                                 synflow_iterations=3)
        assert list(mask) == list(params)
    assert_same(before, snapshot(model))


TINY_MODELS = {"conv2": ("conv2", (3, 4, 4)), "resnet20": ("resnet20", (3, 4, 4))}


@pytest.mark.parametrize("method", PAI_METHODS)
@pytest.mark.parametrize("model_name", list(TINY_MODELS))
def test_every_method_gives_a_valid_mask_of_exact_density_on_a_registry_model(method, model_name):
    name, shape = TINY_MODELS[model_name]
    model = create_model(name, shape, 10, seed=0)
    params = prunable_parameters(model)
    g = torch.Generator().manual_seed(0)
    context = ScoringContext(generator=torch.Generator().manual_seed(0), input_shape=shape,
                             batches=((torch.randn(8, *shape, generator=g), torch.randint(0, 10, (8,), generator=g)),))
    before = snapshot(model)
    total = sum(p.numel() for p in params.values())
    mask = prune_at_init(model, params, 0.05, method=method, context=context, synflow_iterations=3)
    mask.validate(model)
    assert list(mask) == list(params) and mask.num_kept() == density_to_count(0.05, total)
    layer = prune_at_init(model, params, 0.05, method=method, scope="layer", distribution="erk",
                          context=context, synflow_iterations=3)
    expected = layer_keep_counts({n: p.shape for n, p in params.items()}, 0.05, "erk")
    assert {n: int(t.sum()) for n, t in layer.items()} == expected
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("method", PAI_METHODS)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("density", [1.0, 0.37, 0.04])
def test_exact_counts_for_every_scope_and_distribution(method, distribution, density):
    model = BNNet()
    params = prunable_parameters(model)
    total = sum(p.numel() for p in params.values())
    mask = prune_at_init(model, params, density, method=method, distribution=distribution, context=context_for(),
                         synflow_iterations=4)
    assert mask.num_kept() == density_to_count(density, total)
    layer = prune_at_init(model, params, density, method=method, scope="layer", distribution=distribution,
                          context=context_for(), synflow_iterations=4)
    assert {n: int(t.sum()) for n, t in layer.items()} == layer_keep_counts(
        {n: p.shape for n, p in params.items()}, density, distribution)


def test_layer_scope_counts_shrink_monotonically_for_synflow_even_when_rounding_wobbles():
    """Uniform layer counts can tick up by one as ρ^(k/K) falls; iterative SynFlow must not trip on it."""
    net = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 9))
    params = {n: p for n, p in net.named_parameters() if n.endswith("weight")}
    shapes = {n: p.shape for n, p in params.items()}
    # the case found: round 5 of 15 at ρ = 0.85 asks 8 of 8 in the first layer after keeping 7 in round 4
    assert layer_keep_counts(shapes, 0.85 ** (4 / 15), "uniform")["0.weight"] == 7
    assert layer_keep_counts(shapes, 0.85 ** (5 / 15), "uniform")["0.weight"] == 8
    mask = prune_at_init(net, params, 0.85, method="synflow", scope="layer", context=ScoringContext(input_shape=(1,)),
                         synflow_iterations=15)
    assert {n: int(t.sum()) for n, t in mask.items()} == layer_keep_counts(shapes, 0.85, "uniform")
    net = nn.Sequential(nn.Linear(7, 3), nn.ReLU(), nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    params = {n: p for n, p in net.named_parameters() if n.endswith("weight")}
    for density in (0.5, 0.23, 0.11, 0.05):
        for distribution in DISTRIBUTIONS:
            mask = prune_at_init(net, params, density, method="synflow", scope="layer", distribution=distribution,
                                 context=ScoringContext(input_shape=(7,)), synflow_iterations=17)
            assert {n: int(t.sum()) for n, t in mask.items()} == layer_keep_counts(
                {n: p.shape for n, p in params.items()}, density, distribution)


# --- invert, determinism, collapse ----------------------------------------------------------------
def tanh_net() -> nn.Sequential:
    """Smooth activations: no dead units, so no tied (zero) scores and complements are exact."""
    g = torch.Generator().manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(D)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=D))
    return net


@pytest.mark.parametrize("method", PAI_METHODS)
def test_invert_keeps_the_complement_of_the_ranking(method):
    net = tanh_net()
    params = {"0.weight": net[0].weight, "2.weight": net[2].weight}       # 20 + 15 = 35 weights
    g = torch.Generator().manual_seed(2)
    batches = ((torch.randn(6, 4, generator=g, dtype=D), torch.randint(0, 3, (6,), generator=g)),)

    def run(density, invert):
        context = ScoringContext(generator=torch.Generator().manual_seed(9), batches=batches)
        return prune_at_init(net, params, density, method=method, context=context, invert=invert,
                             synflow_iterations=1)

    low, high = run(10 / 35, True), run(25 / 35, False)
    assert low.num_kept() == 10 and high.num_kept() == 25
    assert all(torch.equal(low[n], ~high[n]) for n in params)
    # and it is exactly the selection of the negated scores
    scores = SCORERS[method](net, params, ScoringContext(generator=torch.Generator().manual_seed(9),
                                                         batches=batches, input_shape=(4,)))
    assert low == select({n: -s for n, s in scores.items()}, 10, scope="global")


@pytest.mark.parametrize("method", PAI_METHODS)
def test_same_seed_same_mask(method):
    model = BNNet()
    params = prunable_parameters(model)
    a = prune_at_init(model, params, 0.2, method=method, context=context_for(3), synflow_iterations=3)
    b = prune_at_init(model, params, 0.2, method=method, context=context_for(3), synflow_iterations=3)
    assert a == b
    if method == "random":
        assert a != prune_at_init(model, params, 0.2, method=method, context=context_for(4))


def test_random_global_is_uniform_over_all_weights():
    model = create_model("lenet300", (1, 8, 8), 10, seed=0)
    params = prunable_parameters(model)
    mask = prune_at_init(model, params, 0.1, method="random", context=ScoringContext(generator=torch.Generator().manual_seed(0)))
    for name, density in mask.layer_densities().items():   # binomial spread: ~±0.005 on 19200, ±0.03 on 1000
        assert abs(density - 0.1) < 0.05, name


def test_layer_collapse_is_returned_not_refused():
    net = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 2))
    with torch.no_grad():
        net[2].weight.mul_(1e-4)
    params = {"0.weight": net[0].weight, "2.weight": net[2].weight}
    mask = prune_at_init(net, params, 0.01, method="magnitude", context=ScoringContext())
    assert mask.collapsed_layers() == ["2.weight"]
    # a per-layer count of zero: SynFlow keeps iterating on a net without flow and still returns
    mask = prune_at_init(net, params, 0.004, method="synflow", scope="layer", context=ScoringContext(input_shape=(50,)),
                         synflow_iterations=20)
    assert mask.collapsed_layers() == ["2.weight"] and mask.num_kept() == density_to_count(0.004, 2080)
    for method in ("snip", "grasp"):
        x, y = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 0, 1])
        mask = prune_at_init(net, params, 0.004, method=method, scope="layer", context=ScoringContext(batches=((x, y),)))
        assert mask.collapsed_layers() == ["2.weight"]


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_density_outside_unit_interval_is_refused(density):
    model = BNNet()
    with pytest.raises(TicketlabError, match="density"):
        prune_at_init(model, prunable_parameters(model), density, method="magnitude", context=context_for())


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "prune-it-all"}, "Unknown pruning-at-initialisation method"),
    ({"method": "magnitude", "scope": "row"}, "Unknown scope"),
    ({"method": "magnitude", "scope": "everywhere"}, "Unknown scope"),
    ({"method": "magnitude", "distribution": "gaussian"}, "Unknown density distribution"),
    ({"method": "magnitude", "scope": "layer", "distribution": "ERK!"}, "Unknown density distribution"),
    ({"method": "synflow", "synflow_iterations": 0}, "at least 1"),
])
def test_bad_options_are_refused_with_one_sentence(kwargs, match):
    model = BNNet()
    with pytest.raises(TicketlabError, match=match):
        prune_at_init(model, prunable_parameters(model), 0.5, context=context_for(), **kwargs)


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_data_driven_scorers_need_batches(method):
    model = BNNet()
    with pytest.raises(TicketlabError, match="at least one"):
        prune_at_init(model, prunable_parameters(model), 0.5, method=method, context=ScoringContext())
    x, y = bn_batches(1)[0]
    with pytest.raises(TicketlabError, match="integer class ids"):
        prune_at_init(model, prunable_parameters(model), 0.5, method=method,
                      context=ScoringContext(batches=((x, y.float()),)))


def test_other_user_errors():
    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(TicketlabError, match="input shape"):
        prune_at_init(net, {"0.weight": net[0].weight}, 0.5, method="synflow", context=ScoringContext())
    with pytest.raises(TicketlabError, match="seeded torch.Generator"):
        prune_at_init(net, {"0.weight": net[0].weight}, 0.5, method="random", context=ScoringContext())
    with pytest.raises(TicketlabError, match="not a parameter"):
        prune_at_init(net, {"1.weight": net[0].weight}, 0.5, method="magnitude", context=ScoringContext())
    with pytest.raises(TicketlabError, match="temperature"):
        ScoringContext(grasp_temperature=0.0)
    assert math.isclose(ScoringContext().grasp_temperature, 200.0)
