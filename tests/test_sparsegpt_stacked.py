"""SparseGPT speed-ups that must not change results: layers sharing one Hessian pruned in one
stacked pass, the vectorised N:M group choice, and the device-resident exact-k selection."""

import math

import pytest
import torch

from ticketlab.errors import TicketlabError
from ticketlab.llm import relative_reconstruction_error
from ticketlab.methods.sparsegpt import (
    block_prune_counts,
    hessian_factor,
    lowest_k,
    lowest_k_rows,
    nm_prune_mask,
    sparsegpt_prune,
    sparsegpt_prune_stacked,
)
from ticketlab.select import NMPattern, select


def _shared_inputs(cols=96, tokens=500, seed=0):
    """Correlated calibration inputs with uneven feature scales and their Gram matrix (cols, cols)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g)
    X = (torch.randn(tokens, cols, generator=g) @ mix) * torch.exp(torch.randn(cols, generator=g))
    return X.t() @ X


def _weights(row_counts, cols, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, cols, generator=g) for rows in row_counts]


def _assert_same_result(stacked, alone, weights, G):
    """Identical masks; weights and relative reconstruction errors equal up to float rounding."""
    for (w_s, k_s), (w_a, k_a), W in zip(stacked, alone, weights):
        assert torch.equal(k_s, k_a)
        torch.testing.assert_close(w_s, w_a, atol=1e-5, rtol=1e-4)
        e_s, e_a = relative_reconstruction_error(W, w_s, G), relative_reconstruction_error(W, w_a, G)
        assert abs(e_s - e_a) <= 1e-4 * e_a


# --- stacked == one by one ---------------------------------------------------------------------------
@pytest.mark.parametrize("row_counts", [(24, 24, 24), (32, 8, 8), (16,)])   # MHA q/k/v, GQA q/k/v, one layer
@pytest.mark.parametrize("kind", ["50%", "0.3/0.6/0.45", "2:4", "4:8"])
def test_stacked_equals_one_by_one(row_counts, kind):
    cols, blocksize = 80, 32                       # a partial last block (80 = 32 + 32 + 16)
    G = _shared_inputs(cols)
    weights = _weights(row_counts, cols)
    U = hessian_factor(G)
    if ":" in kind:
        kwargs = [dict(pattern=NMPattern.parse(kind))] * len(weights)
        stacked_kwargs = dict(pattern=NMPattern.parse(kind))
    else:
        sparsities = [float(s.rstrip("%")) / (100 if s.endswith("%") else 1) for s in kind.split("/")]
        sparsities = (sparsities * len(weights))[:len(weights)]
        kwargs = [dict(sparsity=s) for s in sparsities]
        stacked_kwargs = dict(sparsity=sparsities if len(set(sparsities)) > 1 else sparsities[0])
    alone = [sparsegpt_prune(W, G, factor=U, blocksize=blocksize, **kw) for W, kw in zip(weights, kwargs)]
    stacked = sparsegpt_prune_stacked(weights, G, blocksize=blocksize, names=["q", "k", "v"][:len(weights)], **stacked_kwargs)
    _assert_same_result(stacked, alone, weights, G)


def test_stacked_keeps_exact_per_layer_and_per_block_counts():
    cols, blocksize = 100, 32
    G = _shared_inputs(cols)
    weights = _weights((12, 12, 7), cols)
    sparsities = [0.5, 0.37, 0.61]
    out = sparsegpt_prune_stacked(weights, G, sparsity=sparsities, blocksize=blocksize)
    for (new_w, keep), W, s in zip(out, weights, sparsities):
        rows = W.shape[0]
        assert int((~keep).sum()) == math.floor(s * rows * cols + 0.5)
        per_block = [int((~keep[:, i:i + blocksize]).sum()) for i in range(0, cols, blocksize)]
        assert per_block == block_prune_counts(rows, cols, s, blocksize)
        assert bool((new_w[~keep] == 0).all()) and new_w.shape == W.shape and new_w.dtype == torch.float32


def test_stacked_zeroes_dead_inputs_and_modifies_no_input():
    cols = 48
    g = torch.Generator().manual_seed(4)
    X = torch.randn(300, cols, generator=g)
    X[:, 7] = 0                                   # a dead input feature
    G = X.t() @ X
    stored = [torch.randn(cols, 16, generator=g), torch.randn(cols, 16, generator=g)]   # Conv1D-style (in, out)
    views = [s.t() for s in stored]
    before = [s.clone() for s in stored] + [G.clone()]
    out = sparsegpt_prune_stacked(views, G, pattern=NMPattern(2, 4), blocksize=16)
    for new_w, keep in out:
        assert bool((new_w[:, 7] == 0).all())
        assert bool((keep.reshape(16, -1, 4).sum(-1) == 2).all())
    assert all(torch.equal(a, b) for a, b in zip(stored + [G], before))


def test_stacked_rejects_mismatched_layers():
    G = _shared_inputs(32)
    with pytest.raises(TicketlabError, match="same number of inputs"):
        sparsegpt_prune_stacked([torch.randn(4, 32), torch.randn(4, 16)], G, sparsity=0.5)
    with pytest.raises(TicketlabError, match="2 sparsities"):
        sparsegpt_prune_stacked([torch.randn(4, 32)] * 3, G, sparsity=[0.5, 0.5])
    with pytest.raises(TicketlabError, match="exactly one"):
        sparsegpt_prune_stacked([torch.randn(4, 32)], G)


def test_column_loop_reads_nothing_back_to_the_host(monkeypatch):
    """With the factor given, pruning must not call item/int/float/bool/tolist/cpu/nonzero on a
    tensor: on a GPU each would be a device round trip (the CPU-side proxy of a sync check)."""
    G = _shared_inputs(64)
    weights = _weights((8, 8, 4), 64)
    U = hessian_factor(G)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside SparseGPT")

    for attr in ("item", "tolist", "cpu", "nonzero", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    sparsegpt_prune_stacked(weights, G, sparsity=0.5, blocksize=16, factor=U)
    sparsegpt_prune_stacked(weights, G, pattern=NMPattern(2, 4), blocksize=16, factor=U)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sweep_never_synchronises_and_equals_cpu():
    """On a GPU the whole pass (factor given) runs under sync debug mode "error"; its masks equal
    the CPU's and its weights agree up to float rounding."""
    G = _shared_inputs(256, tokens=2000)
    weights = _weights((64, 64, 32), 256)
    U = hessian_factor(G)
    G_cuda, U_cuda, w_cuda = G.cuda(), U.cuda(), [w.cuda() for w in weights]
    for kwargs in ({"sparsity": 0.5}, {"pattern": NMPattern(2, 4)}):
        sparsegpt_prune_stacked(w_cuda, G_cuda, factor=U_cuda, **kwargs)      # warm-up outside the guard
        torch.cuda.synchronize()
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            on_gpu = sparsegpt_prune_stacked(w_cuda, G_cuda, factor=U_cuda, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        on_cpu = sparsegpt_prune_stacked(weights, G, factor=U, **kwargs)
        for (w_g, k_g), (w_c, k_c) in zip(on_gpu, on_cpu):
            assert (k_g.cpu() != k_c).float().mean() < 1e-3        # near-ties may flip under other rounding
            assert float((w_g.cpu() - w_c).norm() / w_c.norm()) < 1e-3


# --- N:M: vectorised group choice == the previous per-group `select` ------------------------------------
def test_nm_prune_mask_hand_checked_ties_and_counts():
    # columns are groups of m = 4 (transposed layout); keep n = 2 per group
    scores = torch.tensor([
        [1.0, 5.0, 2.0, 3.0, 0.0],
        [1.0, 4.0, 2.0, 3.0, 0.0],
        [1.0, 3.0, 2.0, 3.0, 0.0],
        [1.0, 2.0, 2.0, 3.0, 0.0],
    ])
    pruned = nm_prune_mask(scores, 2)
    # all equal -> lower index wins: keep rows 0, 1 ; strictly decreasing -> keep 0, 1
    # [2, 2, 2, 2] -> keep 0, 1 ; all 3 -> keep 0, 1 ; all 0 -> keep 0, 1
    assert pruned.t().tolist() == [[False, False, True, True]] * 5
    scores = torch.tensor([[0.0, 7.0], [3.0, 1.0], [3.0, 7.0], [2.0, 7.0]])
    # group 0: (0, 3, 3, 2) -> keep the two 3s; group 1: (7, 1, 7, 7) -> keep indices 0 and 2
    assert nm_prune_mask(scores, 2).t().tolist() == [[True, False, False, True], [False, True, False, True]]
    assert bool(((~nm_prune_mask(torch.rand(8, 50), 3)).sum(0) == 3).all())


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8)])
def test_nm_prune_mask_equals_shared_select(n, m):
    g = torch.Generator().manual_seed(n * 10 + m)
    for scores in [torch.rand(m, 200, generator=g), torch.randint(0, 3, (m, 200), generator=g).float()]:
        keep = select({"g": scores.t()}, pattern=NMPattern(n, m))["g"]
        assert torch.equal(nm_prune_mask(scores, n), ~keep.t())


def _previous_nm_sparsegpt(W, G, nm, blocksize):
    """The N:M path as it was before vectorising: one shared `select` call per group of columns,
    full in-block rank-1 updates (the arithmetic the stacked pass regroups)."""
    rows, cols = W.shape
    U = hessian_factor(G)
    Wt = W.t().clone()
    Wt[torch.diagonal(G) == 0] = 0
    pruned_t = torch.zeros(cols, rows, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        B, Ub, P = Wt[i1:i2], U[i1:i2, i1:i2], pruned_t[i1:i2]
        d = torch.diagonal(Ub)
        E = torch.zeros_like(B)
        for j in range(i2 - i1):
            if j % nm.m == 0:
                g = slice(j, j + nm.m)
                scores = (B[g].square() / d[g].square().unsqueeze(1)).t()
                P[g] = ~select({"g": scores}, pattern=nm)["g"].t()
            E[j] = B[j] * P[j] / d[j]
            B[j + 1:] -= Ub[j, j + 1:].unsqueeze(1) * E[j]
        B.masked_fill_(P, 0.0)
        Wt[i2:] -= U[i1:i2, i2:].t() @ E
    return Wt.t(), ~pruned_t.t()


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_sparsegpt_equals_previous_per_group_path(pattern):
    nm = NMPattern.parse(pattern)
    G = _shared_inputs(64)
    (W,) = _weights((20,), 64, seed=5)
    W[3, 8:16] = 0.5                               # exact ties in some groups
    prev_w, prev_keep = _previous_nm_sparsegpt(W, G, nm, blocksize=32)
    new_w, keep = sparsegpt_prune(W, G, pattern=nm, blocksize=32)
    assert torch.equal(keep, prev_keep)
    assert bool((keep.reshape(20, -1, nm.m).sum(-1) == nm.n).all())
    torch.testing.assert_close(new_w, prev_w, atol=1e-5, rtol=1e-4)


# --- device-resident exact-k selection ---------------------------------------------------------------
def test_lowest_k_rows_equals_lowest_k_per_row_including_ties():
    g = torch.Generator().manual_seed(7)
    for scores in [torch.rand(3, 40, generator=g), torch.randint(0, 3, (3, 40), generator=g).float(), torch.zeros(2, 40)]:
        for k in [0, 1, 13, 20, 39, 40]:
            rows = lowest_k_rows(scores, k)
            assert rows.shape == scores.shape and bool((rows.sum(1) == k).all())
            for r in range(scores.shape[0]):
                assert torch.equal(rows[r], lowest_k(scores[r], k)), (k, r)


def test_kth_largest_paths_agree():
    """The GPU path (``topk`` of the smaller side) and the CPU path (numpy partition) of the shared
    selection kernel give kthvalue's threshold."""
    from ticketlab.select import _kth_largest

    g = torch.Generator().manual_seed(8)
    for scores in [torch.rand(3, 41, generator=g), torch.randint(0, 4, (2, 41), generator=g).float(),
                   torch.randint(0, 4, (2, 41), generator=g, dtype=torch.int32)]:
        for k in [1, 2, 20, 21, 22, 40, 41]:
            expected = _kth_largest(scores, k, method="kthvalue")
            for method in ("topk", "partition"):
                assert torch.equal(_kth_largest(scores, k, method=method), expected), (k, method)


def test_lowest_k_rows_on_int32_bit_patterns_equals_float_ranking():
    """The stacked pass ranks its (>= 0) scores by their int32 bit patterns: same selection, ties included."""
    g = torch.Generator().manual_seed(9)
    scores = torch.rand(2, 300, generator=g).square()
    scores[:, 100:140] = 0.25                       # exact ties
    scores[:, 5] = 0.0
    for k in [1, 60, 100, 120, 150, 299]:
        assert torch.equal(lowest_k_rows(scores.view(torch.int32), k), lowest_k_rows(scores, k)), k
