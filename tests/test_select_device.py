"""The device-resident selection routine equals the previous (host) implementation, bit for bit.

`_reference_select` below is the algorithm `ticketlab.select` used before it ran on the scores'
device (every score copied to the CPU, ``int(...)`` on tie counts, a stable ``argsort`` per N:M
group); it is kept here verbatim as the oracle. The CUDA tests (skipped without a GPU) check that a
GPU gives the CPU's masks and that row, layer and N:M selection never synchronise with the host.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from ticketlab import select as select_module
from ticketlab.errors import TicketlabError
from ticketlab.masks import Mask
from ticketlab.methods.sparsegpt import lowest_k
from ticketlab.methods.wanda import lowest_k_per_row
from ticketlab.select import NMPattern, keep_counts_after_pruning, select, select_tensors, top_k_rows, top_n_of_m


# --------------------------------------------------------------------------------------------------
# the previous implementation, as it was (CPU only), used as the oracle
# --------------------------------------------------------------------------------------------------
def _ref_top_k_flat(scores, k):
    n = scores.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool)
    if k >= n:
        return torch.ones(n, dtype=torch.bool)
    threshold = torch.kthvalue(scores, n - k + 1).values
    keep = scores > threshold
    missing = k - int(keep.sum())
    if missing:
        ties = torch.nonzero(scores == threshold).flatten()[:missing]
        keep[ties] = True
    return keep


def _ref_prepared(scores, within):
    out = {}
    for name, score in scores.items():
        s = score.detach().to(device="cpu")
        if not s.is_floating_point():
            s = s.to(torch.float64)
        if torch.isnan(s).any():
            raise TicketlabError(f"The scores for {name!r} contain NaN, so no ranking is possible.")
        if within is not None:
            if name not in within or within[name].shape != s.shape:
                raise TicketlabError(f"The current mask does not cover {name!r} with shape {tuple(s.shape)}.")
            s = s.masked_fill(~within[name], float("-inf"))
        out[name] = s
    return out


def _ref_available(name, scores, within):
    return int(within[name].sum()) if within is not None else scores.numel()


def _ref_check_count(k, available, where):
    if not 0 <= k <= available:
        raise TicketlabError(f"Cannot keep {k} weights in {where}: only {available} are available.")


def _ref_select_rows(scores, k, name):
    rows = scores.shape[0]
    if k % rows:
        raise TicketlabError(f"Row-wise selection in {name!r} needs a count divisible by its {rows} rows (got {k}).")
    per_row = k // rows
    flat = scores.reshape(rows, -1)
    cols = flat.shape[1]
    if per_row == 0:
        keep = torch.zeros_like(flat, dtype=torch.bool)
    elif per_row == cols:
        keep = torch.ones_like(flat, dtype=torch.bool)
    else:
        threshold = torch.kthvalue(flat, cols - per_row + 1, dim=1, keepdim=True).values
        keep = flat > threshold
        missing = per_row - keep.sum(dim=1, keepdim=True)
        if bool(missing.any()):
            ties = flat == threshold
            keep |= ties & (ties.cumsum(dim=1) <= missing)
    if bool(torch.isneginf(threshold if 0 < per_row < cols else flat).any()) and \
            bool(torch.isneginf(flat).logical_and(keep).any()):
        raise TicketlabError(f"Row-wise selection in {name!r} would keep weights that are already pruned.")
    return keep.view(scores.shape)


def _ref_select_nm(scores, pattern, name):
    flat = scores.reshape(scores.shape[0], -1) if scores.dim() > 1 else scores.reshape(1, -1)
    if flat.shape[1] % pattern.m:
        raise TicketlabError(
            f"Layer {name!r} has {flat.shape[1]} inputs, not a multiple of {pattern.m}, so {pattern.n}:{pattern.m} cannot apply."
        )
    groups = flat.reshape(-1, pattern.m)
    order = torch.argsort(groups, dim=1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, : pattern.n], True)
    return keep.view(scores.shape)


def _reference_select(scores, keep=None, *, scope="layer", pattern=None, within=None):
    prepared = _ref_prepared(scores, within)
    if pattern is not None:
        return Mask({n: _ref_select_nm(s, pattern, n) for n, s in prepared.items()})
    if keep is None:
        raise TicketlabError("select() needs either a number of weights to keep or an N:M pattern.")
    if scope == "global":
        if not isinstance(keep, int):
            raise TicketlabError("Global selection takes one total count of weights to keep.")
        available = sum(_ref_available(n, s, within) for n, s in prepared.items())
        _ref_check_count(keep, available, "the whole model")
        flat = torch.cat([s.flatten() for s in prepared.values()])
        chosen = _ref_top_k_flat(flat, keep)
        out, offset = {}, 0
        for name, s in prepared.items():
            out[name] = chosen[offset: offset + s.numel()].view(s.shape)
            offset += s.numel()
        return Mask(out)
    counts = {n: keep for n in prepared} if isinstance(keep, int) else dict(keep)
    out = {}
    for name, s in prepared.items():
        k = counts[name]
        _ref_check_count(k, _ref_available(name, s, within), repr(name))
        out[name] = _ref_select_rows(s, k, name) if scope == "row" else _ref_top_k_flat(s.flatten(), k).view(s.shape)
    return Mask(out)


# --------------------------------------------------------------------------------------------------
# score families: continuous, heavy ties, signed zeros, -inf, integers, half precision
# --------------------------------------------------------------------------------------------------
def _family(kind: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    if kind == "randn":
        return torch.randn(shape, generator=g)
    if kind == "ties":
        return torch.randint(0, 3, shape, generator=g).float()
    if kind == "zeros":         # +0.0 and -0.0 compare equal: they are ties, lower index kept
        return torch.randint(0, 2, shape, generator=g).float() * torch.where(torch.rand(shape, generator=g) < 0.5, -0.0, 0.0)
    if kind == "neginf":
        s = torch.randint(0, 4, shape, generator=g).float()
        return s.masked_fill(torch.rand(shape, generator=g) < 0.3, float("-inf"))
    if kind == "int":
        return torch.randint(-2, 3, shape, generator=g)
    if kind == "half":
        return torch.randint(0, 5, shape, generator=g).to(torch.float16)
    raise ValueError(kind)


KINDS = ("randn", "ties", "zeros", "neginf", "int", "half")
SHAPES = ((12, 16), (8, 4, 3, 4), (40,))


def _layers(kind: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"l{i}": _family(kind, shape, g) for i, shape in enumerate(SHAPES)}


def _same(a: Mask, b: Mask) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == torch.bool and a[name].shape == b[name].shape
        assert torch.equal(a[name], b[name]), name


def _outcome(fn, *args, **kwargs):
    """The mask, or the error message: both implementations must agree on either."""
    try:
        return fn(*args, **kwargs)
    except TicketlabError as error:
        return str(error)


@pytest.fixture(params=["kthvalue", "topk"])
def threshold_path(request, monkeypatch):
    """Run a test with either way of finding the threshold (topk is the GPU's path for few rows)."""
    if request.param == "topk":
        monkeypatch.setattr(select_module, "_prefer_topk", lambda flat: True)
    return request.param


# --------------------------------------------------------------------------------------------------
# equality with the previous implementation
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_layer_and_global_scopes_equal_reference(kind, threshold_path):
    scores = _layers(kind, seed=1)
    for fraction in (0.0, 0.1, 0.5, 0.77, 1.0):
        counts = {n: round(fraction * s.numel()) for n, s in scores.items()}
        _same(select(scores, counts, scope="layer"), _reference_select(scores, counts, scope="layer"))
        total = sum(counts.values())
        _same(select(scores, total, scope="global"), _reference_select(scores, total, scope="global"))


@pytest.mark.parametrize("kind", KINDS)
def test_row_scope_equals_reference(kind, threshold_path):
    scores = _layers(kind, seed=2)
    for per_row_fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        counts = {}
        for name, s in scores.items():
            cols = s.numel() // s.shape[0]
            counts[name] = s.shape[0] * round(per_row_fraction * cols)
        assert _outcome(select, scores, counts, scope="row") == _outcome(_reference_select, scores, counts, scope="row")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pattern", ["1:2", "2:4", "1:4", "3:4", "4:8", "3:16"])
def test_nm_equals_reference(kind, pattern):
    g = torch.Generator().manual_seed(3)
    scores = {"a": _family(kind, (6, 32), g), "c": _family(kind, (4, 2, 3, 16), g), "v": _family(kind, (48,), g)}
    nm = NMPattern.parse(pattern)
    _same(select(scores, pattern=nm), _reference_select(scores, pattern=nm))


def test_nm_pairwise_and_kernel_paths_agree(monkeypatch):
    g = torch.Generator().manual_seed(4)
    groups = torch.randint(0, 3, (500, 8), generator=g).float()
    pairwise = top_n_of_m(groups, 3)
    monkeypatch.setattr(select_module, "_PAIRWISE_MAX_M", 0)
    assert torch.equal(top_n_of_m(groups, 3), pairwise)


@pytest.mark.parametrize("kind", ["ties", "neginf", "randn"])
def test_within_equals_reference(kind, threshold_path):
    scores = _layers(kind, seed=5)
    scores = {n: s.float() for n, s in scores.items()}
    first = _reference_select(scores, {n: s.numel() // 2 for n, s in scores.items()}, scope="layer")
    counts = keep_counts_after_pruning(first, {n: 0.3 for n in scores})
    for scope in ("layer", "global"):
        keep = counts if scope == "layer" else sum(counts.values())
        ours, ref = select(scores, keep, scope=scope, within=first), _reference_select(scores, keep, scope=scope, within=first)
        _same(ours, ref)
        assert ours.is_subset_of(first)
    # row scope: rows of a half-pruned layer may have fewer candidates than their quota
    g = torch.Generator().manual_seed(6)
    rows = {"w": torch.randint(0, 3, (10, 8), generator=g).float()}
    row_first = Mask({"w": torch.rand(10, 8, generator=g) < 0.6})     # 2 to 7 candidates per row
    for per_row in (0, 1, 2, 4, 6):
        args = (rows, {"w": 10 * per_row})
        assert _outcome(select, *args, scope="row", within=row_first) == \
            _outcome(_reference_select, *args, scope="row", within=row_first)


def test_helpers_equal_reference_complements():
    g = torch.Generator().manual_seed(7)
    for scores in (torch.rand(16, 9, generator=g), torch.randint(0, 3, (16, 9), generator=g).float()):
        rows, cols = scores.shape
        for k in range(cols + 1):
            assert torch.equal(lowest_k_per_row(scores, k), ~_reference_select({"s": scores}, rows * (cols - k), scope="row")["s"])
        for k in (0, 1, 37, 72, 143, 144):
            assert torch.equal(lowest_k(scores, k), ~_reference_select({"s": scores}, scores.numel() - k, scope="layer")["s"])
            assert torch.equal(top_k_rows(scores.reshape(1, -1), k).view(rows, cols),
                               _reference_select({"s": scores}, k, scope="layer")["s"])


def test_top_n_of_m_accepts_a_transposed_layout():
    g = torch.Generator().manual_seed(8)
    scores = torch.randint(0, 3, (4, 50), generator=g).float()   # (m, groups), as SparseGPT holds a block
    expected = _reference_select({"s": scores.t().contiguous()}, pattern=NMPattern(2, 4))["s"]
    assert torch.equal(top_n_of_m(scores.t(), 2), expected)


# --------------------------------------------------------------------------------------------------
# golden cases by hand
# --------------------------------------------------------------------------------------------------
def test_row_ties_keep_the_lower_index():
    scores = {"w": torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5, 2.0],
                                 [0.0, -0.0, 0.0, 3.0, -0.0, 1.0]])}
    mask = select(scores, {"w": 6}, scope="row")
    assert mask["w"].tolist() == [[False, True, True, True, False, False],
                                  [True, False, False, True, False, True]]


def test_nm_ties_keep_the_lower_index():
    scores = {"w": torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 5.0, 5.0, 5.0, -0.0, 0.0, 0.0, -1.0]])}
    assert select(scores, pattern=NMPattern(2, 4))["w"].tolist() == \
        [[True, True, False, False, False, True, True, False, True, True, False, False]]
    assert select(scores, pattern=NMPattern(3, 4))["w"].tolist() == \
        [[True, True, True, False, False, True, True, True, True, True, True, False]]


def test_neginf_scores_and_already_pruned_weights():
    scores = {"w": torch.tensor([[3.0, float("-inf"), 1.0, float("-inf")]])}
    # -inf is an ordinary (lowest) score in layer scope: it can be kept once the others are
    assert select(scores, {"w": 3}, scope="layer")["w"].tolist() == [[True, True, True, False]]
    within = Mask({"w": torch.tensor([[True, True, False, True]])})
    assert select(scores, {"w": 2}, scope="layer", within=within)["w"].tolist() == [[True, True, False, False]]
    with pytest.raises(TicketlabError, match="only 3 are available"):
        select(scores, {"w": 4}, scope="layer", within=within)
    with pytest.raises(TicketlabError, match="'w' would keep weights that are already pruned"):
        select(scores, {"w": 3}, scope="row")


# --------------------------------------------------------------------------------------------------
# NaN: refused with the layer's name, whichever scope, whichever layer holds it
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["global", "layer", "row", "nm"])
def test_nan_names_the_layer(scope):
    scores = {"first": torch.rand(4, 8), "second.weight": torch.rand(4, 8), "third": torch.rand(4, 8)}
    scores["second.weight"][2, 5] = float("nan")
    kwargs = {"pattern": NMPattern(2, 4)} if scope == "nm" else \
        {"keep": 48 if scope == "global" else 16, "scope": scope}
    with pytest.raises(TicketlabError, match=r"The scores for 'second.weight' contain NaN"):
        select(scores, **kwargs)
    with pytest.raises(TicketlabError, match=r"'second.weight' contain NaN"):
        select_tensors(scores, **kwargs)
    # without the check nothing is read back, and the other layers are still exact
    out = select_tensors(scores, **kwargs, check=False)
    if scope != "global":
        assert torch.equal(out["third"], _reference_select({"third": scores["third"]}, **kwargs)["third"])


def test_nan_is_reported_before_a_later_layers_pruned_row():
    scores = {"a": torch.tensor([[1.0, float("-inf")]]), "b": torch.tensor([[float("nan"), 1.0]])}
    with pytest.raises(TicketlabError, match="'b' contain NaN"):
        select(scores, {"a": 2, "b": 1}, scope="row")
    with pytest.raises(TicketlabError, match="'a' would keep"):
        select({"a": scores["a"]}, {"a": 2}, scope="row")


def test_nan_at_an_already_pruned_position_is_still_refused():
    scores = {"w": torch.tensor([1.0, float("nan"), 2.0])}
    within = Mask({"w": torch.tensor([True, False, True])})
    with pytest.raises(TicketlabError, match="NaN"):
        select(scores, {"w": 1}, within=within)


def test_helpers_refuse_nan_on_the_cpu():
    bad = torch.rand(4, 8)
    bad[1, 1] = float("nan")
    with pytest.raises(TicketlabError, match="NaN"):
        lowest_k_per_row(bad, 3)
    with pytest.raises(TicketlabError, match="NaN"):
        lowest_k(bad, 3)


def test_check_false_gives_the_same_masks_on_finite_scores():
    scores = _layers("ties", seed=9)
    counts = {n: s.numel() // 3 for n, s in scores.items()}
    checked, unchecked = select_tensors(scores, counts), select_tensors(scores, counts, check=False)
    assert all(torch.equal(checked[n], unchecked[n]) for n in scores)


def test_exhaustive_small_rows_match_stable_sort():
    """Every 0/1/2-valued row of length 5 and every quota: the kept set is a stable sort's prefix."""
    rows = torch.tensor(list(itertools.product([0.0, 1.0, 2.0], repeat=5)))
    for k in range(6):
        keep = select({"w": rows}, {"w": rows.shape[0] * k}, scope="row")["w"]
        order = torch.argsort(rows, dim=1, descending=True, stable=True)[:, :k]
        expected = torch.zeros_like(keep).scatter_(1, order, True)
        assert torch.equal(keep, expected), k


# --------------------------------------------------------------------------------------------------
# CUDA: same masks as the CPU, and no host synchronisation in row / layer / N:M selection
# --------------------------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("kind", ["randn", "ties", "zeros", "neginf", "int"])
def test_cuda_equals_cpu(kind):
    cpu = _layers(kind, seed=10)
    gpu = {n: s.cuda() for n, s in cpu.items()}
    cases = [dict(keep={n: s.numel() // 2 for n, s in cpu.items()}, scope="layer"),
             dict(keep=sum(s.numel() for s in cpu.values()) // 3, scope="global"),
             dict(keep={n: s.shape[0] * ((s.numel() // s.shape[0]) // 2) for n, s in cpu.items()}, scope="row"),
             dict(pattern=NMPattern(2, 4)), dict(pattern=NMPattern(3, 16))]
    for kwargs in cases:
        on_gpu = _outcome(select_tensors, gpu, **kwargs)
        on_cpu = _outcome(select_tensors, cpu, **kwargs)
        if isinstance(on_cpu, str):
            assert on_gpu == on_cpu
            continue
        for name in cpu:
            assert on_gpu[name].is_cuda
            assert torch.equal(on_gpu[name].cpu(), on_cpu[name]), (kwargs, name)
    big = torch.randint(0, 50, (512, 1024), generator=torch.Generator().manual_seed(11)).float()
    for rows in (512, 100):                                 # kthvalue (many rows) and topk (few rows)
        assert torch.equal(lowest_k_per_row(big[:rows].cuda(), 300).cpu(), lowest_k_per_row(big[:rows], 300))
    for k in (1, 5000, 100000, 131071):                     # one long row: topk of either side
        assert torch.equal(lowest_k(big[:128].cuda(), k).cpu(), lowest_k(big[:128], k))


@cuda
def test_cuda_row_layer_and_nm_selection_never_synchronise():
    g = torch.Generator().manual_seed(12)
    scores = torch.randint(0, 20, (1024, 512), generator=g).float().cuda()
    block = scores[:128].contiguous()
    within = Mask({"w": torch.rand(1024, 512, generator=g) < 0.9})
    calls = [
        lambda: lowest_k_per_row(scores, 256),
        lambda: lowest_k(block, 30000),
        lambda: select_tensors({"w": scores}, pattern=NMPattern(2, 4), check=False),
        lambda: select_tensors({"w": scores}, pattern=NMPattern(3, 16), check=False),
        lambda: select_tensors({"w": scores}, 1024 * 200, scope="row", check=False),
        lambda: select_tensors({"w": scores}, 300000, scope="layer", check=False),
        lambda: select_tensors({"w": scores}, 300000, scope="global", check=False),
        lambda: select_tensors({"w": scores}, 300000, scope="layer", within=within, check=False),
        lambda: top_n_of_m(block.t(), 2),
    ]
    for call in calls:          # warm up allocator and kernels outside the guarded region
        call()
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for call in calls:
            call()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()


@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (3, 4), (4, 8), (1, 8)])
def test_broadcast_and_stepwise_n_of_m_agree_with_ties(monkeypatch, n, m):
    """The two ways `top_n_of_m` ranks small groups give the same masks, ties (lower index kept)
    included, on contiguous and transposed layouts; a hand-checked group pins the rule."""
    g = torch.Generator().manual_seed(m * 10 + n)
    scores = torch.randint(0, 3, (300, m), generator=g).float()      # many ties
    outputs = {}
    for bound in (0, 1 << 30):                                        # stepwise, then broadcast
        monkeypatch.setitem(select_module._BROADCAST_MAX, "cpu", bound)
        outputs[bound] = (top_n_of_m(scores, n), top_n_of_m(scores.t().contiguous().t(), n))
    assert torch.equal(outputs[0][0], outputs[1 << 30][0]) and torch.equal(outputs[0][1], outputs[1 << 30][1])
    assert bool((outputs[0][0].sum(1) == n).all())
    monkeypatch.setitem(select_module._BROADCAST_MAX, "cpu", 1 << 30)
    assert top_n_of_m(torch.tensor([[1.0, 5.0, 5.0, 1.0]]), 2).tolist() == [[False, True, True, False]]
    assert top_n_of_m(torch.tensor([[2.0, 2.0, 2.0, 2.0]]), 2).tolist() == [[True, True, False, False]]
