"""Layer-wise density distributions: hand-computed ER / ERK values and exact totals."""

import math

import pytest

from ticketlab.densities import layer_densities, layer_keep_counts
from ticketlab.errors import TicketlabError

SHAPES = {"a": (300, 784), "b": (100, 300), "c": (10, 100)}


def test_uniform_is_the_same_everywhere():
    assert layer_densities(SHAPES, 0.1, "uniform") == {"a": 0.1, "b": 0.1, "c": 0.1}


def test_erk_hand_computed_and_total_matches():
    shapes = {"x": (4, 4), "y": (2, 8)}  # raw: 8/16 = 0.5 and 10/16 = 0.625, 16 weights each
    d = layer_densities(shapes, 0.5, "erk")
    epsilon = (0.5 * 32) / (0.5 * 16 + 0.625 * 16)
    assert d["x"] == pytest.approx(0.5 * epsilon) and d["y"] == pytest.approx(0.625 * epsilon)
    assert 16 * d["x"] + 16 * d["y"] == pytest.approx(16)


@pytest.mark.parametrize("distribution", ["er", "erk"])
@pytest.mark.parametrize("density", [0.01, 0.05, 0.2, 0.9])
def test_sums_to_target_and_caps_at_one(distribution, density):
    shapes = {**SHAPES, "conv": (16, 3, 3, 3)}
    d = layer_densities(shapes, density, distribution)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    assert sum(d[n] * sizes[n] for n in shapes) == pytest.approx(density * sum(sizes.values()))
    assert all(0 < v <= 1.0 for v in d.values())
    # smaller layers get denser under ER/ERK
    assert d["c"] >= d["b"] >= d["a"]


def test_dense_layers_are_re_solved():
    d = layer_densities(SHAPES, 0.9, "erk")
    assert d["c"] == 1.0 and d["b"] == 1.0 and d["a"] < 0.9


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
def test_counts_sum_exactly(distribution):
    counts = layer_keep_counts(SHAPES, 0.037, distribution)
    total = sum(math.prod(s) for s in SHAPES.values())
    assert sum(counts.values()) == math.floor(0.037 * total + 0.5)
    assert all(0 <= counts[n] <= math.prod(s) for n, s in SHAPES.items())


def test_bad_inputs():
    with pytest.raises(TicketlabError, match="Unknown density distribution"):
        layer_densities(SHAPES, 0.1, "gaussian")
    with pytest.raises(TicketlabError, match="density must lie"):
        layer_densities(SHAPES, 0.0, "erk")
