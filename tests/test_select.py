"""The shared selection routine: exact counts, ranking invariant, tie-breaking, scopes, N:M."""

import pytest
import torch

from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.select import NMPattern, keep_counts_after_pruning, select


def _scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(30, 20, generator=g), "b": torch.randn(10, 30, generator=g)}


def test_layer_scope_keeps_exact_counts_and_ranking():
    scores = _scores()
    mask = select(scores, {"a": 123, "b": 7}, scope="layer")
    assert int(mask["a"].sum()) == 123 and int(mask["b"].sum()) == 7
    for name in scores:
        kept, pruned = scores[name][mask[name]], scores[name][~mask[name]]
        assert kept.min() >= pruned.max()


def test_global_scope_ranks_across_layers():
    scores = _scores()
    mask = select(scores, 250, scope="global")
    assert mask.num_kept() == 250
    kept = torch.cat([scores[n][mask[n]] for n in scores])
    pruned = torch.cat([scores[n][~mask[n]] for n in scores])
    assert kept.min() >= pruned.max()


def test_ties_are_broken_by_lower_index_and_repeat():
    scores = {"w": torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5])}
    mask = select(scores, {"w": 2}, scope="layer")
    assert mask["w"].tolist() == [False, True, True, False, False]
    assert select(scores, {"w": 2}, scope="layer") == mask


def test_within_makes_masks_shrink():
    scores = _scores()
    first = select(scores, {"a": 300, "b": 150}, scope="layer")
    # even if pruned weights now have the highest scores, they stay pruned
    flipped = {n: torch.where(first[n], scores[n], scores[n].abs() + 100) for n in scores}
    second = select(flipped, keep_counts_after_pruning(first, {"a": 0.2, "b": 0.2}), scope="layer", within=first)
    assert second.is_subset_of(first)
    assert int(second["a"].sum()) == 300 - 60 and int(second["b"].sum()) == 150 - 30


def test_keep_counts_round_half_up():
    mask = Mask({"w": torch.tensor([True] * 5 + [False] * 5)})
    # 0.1 * 5 = 0.5 -> one weight pruned (half rounds up), 4 kept
    assert keep_counts_after_pruning(mask, {"w": 0.1}) == {"w": 4}
    assert keep_counts_after_pruning(mask, {}) == {"w": 5}


def test_row_scope_keeps_per_row():
    scores = _scores()
    mask = select(scores, {"a": 30 * 5, "b": 10 * 12}, scope="row")
    assert mask["a"].sum(dim=1).tolist() == [5] * 30
    assert mask["b"].sum(dim=1).tolist() == [12] * 10
    with pytest.raises(TicketlabError, match="divisible"):
        select(scores, {"a": 31, "b": 10}, scope="row")


def test_nm_pattern():
    scores = {"w": torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 9.0, 8.0, 7.0]])}
    mask = select(scores, pattern=NMPattern(2, 4))
    assert mask["w"].tolist() == [[True, False, True, False, False, True, True, False]]
    g = torch.Generator().manual_seed(5)
    big = select({"a": torch.randn(6, 16, generator=g), "c": torch.randn(4, 2, 3, 4, generator=g)},
                 pattern=NMPattern.parse("2:4"))
    for t in big.values():
        assert (t.reshape(-1, 4).sum(dim=1) == 2).all()


def test_bad_inputs():
    with pytest.raises(TicketlabError):
        NMPattern(4, 4)
    with pytest.raises(TicketlabError):
        NMPattern.parse("2-4")
    with pytest.raises(TicketlabError, match="only"):
        select(_scores(), {"a": 601, "b": 1}, scope="layer")
    with pytest.raises(TicketlabError, match="NaN"):
        select({"w": torch.tensor([float("nan")])}, 1, scope="global")
    with pytest.raises(TicketlabError, match="multiple"):
        select({"w": torch.ones(2, 6)}, pattern=NMPattern(2, 4))
