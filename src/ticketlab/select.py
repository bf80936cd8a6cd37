"""The one selection routine: scores -> `Mask`.

Every method (magnitude, SNIP, Wanda, ...) produces a score per weight; this module turns scores
into a mask, written once for every comparison group:

* ``scope="global"``: one ranking across all layers, keep the top ``k`` overall;
* ``scope="layer"``: keep the top ``k_l`` of each layer;
* ``scope="row"``: keep the top ``k_l // rows`` of each output row (dim 0) of each layer;
* ``pattern=NMPattern(n, m)``: keep the ``n`` best of every ``m`` consecutive weights along the
  input dimension (the last dimension after flattening everything but dim 0).

Exact-k and deterministic: among equal scores the weight with the lower flat index is kept (the
first ``k`` entries of a stable descending sort). Weights outside ``within`` (already pruned) can
never be kept, which is what makes masks only shrink across IMP rounds.

Where it runs. All arithmetic happens on the device of the scores, with no host synchronisation:
no Python branch depends on a tensor's value, and no loop runs over rows or groups. The count
scopes share one kernel, `top_k_rows`: the k-th largest score of each row (``kthvalue``, or
``topk`` where a GPU would give a long row to one thread block), everything above it, then the
lowest-index entries equal to it, found by a prefix count. N:M groups (m <= 8) rank their entries
by pairwise comparisons, `top_n_of_m`. The checks that need a tensor's value (NaN scores, a row
that would have to keep already-pruned weights) are kept as flags on the device and read once,
after all the selection work is queued: `select_tensors` (device tensors out) makes that one read
unless ``check=False``; `select` returns a `Mask`, which lives on the CPU, so it also copies every
layer's mask to the host.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .errors import TicketlabError
from .masks import Mask
from .groups import Family, GroupLayout

Scope = Literal["global", "layer", "row"]
SCOPES: tuple[str, ...] = ("global", "layer", "row")

#: On a GPU, ``kthvalue`` runs each row on one thread block; with fewer rows than this, the
#: threshold comes from ``topk`` instead, which splits a long row over many blocks.
_KTHVALUE_MIN_ROWS = 256
#: N:M groups up to this size are ranked by pairwise comparisons (m·(m-1)/2 elementwise steps);
#: larger groups go through `_top_k` like any other row.
_PAIRWISE_MAX_M = 8
#: Up to this many comparisons (groups x m x m) the pairwise ranks are formed in one broadcast
#: (five kernels) instead of m·(m-1)/2 steps of three: on 2 CPU threads that halves the time of
#: SparseGPT's per-group choice (512 rows of 2:4: 37 vs 78 µs; 1024 of 4:8: 130 vs 387 µs) and
#: loses beyond ~1500 groups of 4, where the strided steps stream better. On CUDA each step is a
#: kernel launch, so the broadcast is used up to a memory bound (unmeasured: scripts/gpu_checks.sh).
_BROADCAST_MAX = {"cpu": 1 << 15, "cuda": 1 << 24}
_UPPER: dict[tuple[int, torch.device], torch.Tensor] = {}


@dataclass(frozen=True)
class NMPattern:
    """Keep ``n`` of every ``m`` consecutive weights along the input dimension (2:4 -> n=2, m=4)."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (0 < self.n < self.m):
            raise TicketlabError(f"An N:M pattern needs 0 < N < M (got {self.n}:{self.m}).")

    @classmethod
    def parse(cls, text: str) -> "NMPattern":
        try:
            n, m = (int(part) for part in text.split(":"))
        except ValueError:
            raise TicketlabError(f"Cannot read pattern {text!r}: write it as N:M, e.g. 2:4.") from None
        return cls(n, m)

    @property
    def density(self) -> float:
        return self.n / self.m


# ------------------------------------------------------------------------------------------------
# kernels: one comparison group per row, on the scores' device, no host synchronisation
# ------------------------------------------------------------------------------------------------
def _count_dtype(length: int) -> torch.dtype:
    """The narrowest integer type that can count to ``length``: a prefix count over a 4096x11008
    layer then costs 2 bytes per weight (int16), not 8 (int64), and counting is faster too."""
    if length < 2**15:
        return torch.int16
    return torch.int32 if length < 2**31 else torch.int64


def _prefer_topk(flat: torch.Tensor) -> bool:
    """Whether `_kth_largest` should use ``topk``: a GPU tensor with too few rows to fill it."""
    return flat.is_cuda and flat.shape[0] < _KTHVALUE_MIN_ROWS


def _kth_largest(flat: torch.Tensor, k: int, method: str | None = None) -> torch.Tensor:
    """(rows, 1): the ``k``-th largest score of every row of ``flat`` (rows, cols), 1 <= k <= cols.

    The same value whichever way, chosen by device for speed (or by ``method``: ``"partition"``,
    ``"topk"`` or ``"kthvalue"``):

    * CPU: numpy's ``partition`` moves the values alone (SIMD partitioning in numpy >= 2), where
      torch's CPU ``kthvalue`` also permutes an int64 index array of the input's size: about 4x
      faster on a SparseGPT block and no index allocation (dtypes numpy lacks, bf16, use kthvalue);
    * GPU with few rows: ``kthvalue`` runs each row on one thread block, so one long row (a whole
      layer, a SparseGPT block) would crawl; ``topk`` of the smaller side spreads a row over many
      blocks (it returns ``min(k, cols - k + 1)`` values and int64 indices per row);
    * otherwise ``kthvalue``: O(cols) per row.
    """
    rows, cols = flat.shape
    if method is None:
        numpy_ok = flat.device.type == "cpu" and flat.dtype not in (torch.bfloat16, torch.bool)
        method = "partition" if numpy_ok else "topk" if _prefer_topk(flat) else "kthvalue"
    if method == "partition":
        part = np.partition(flat.detach().numpy(), cols - k, axis=1)
        return torch.from_numpy(np.ascontiguousarray(part[:, cols - k:cols - k + 1]))
    if method == "topk":
        if k <= cols - k + 1:
            return torch.topk(flat, k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
        return torch.topk(flat, cols - k + 1, dim=1, largest=False, sorted=False).values.amax(dim=1, keepdim=True)
    return torch.kthvalue(flat, cols - k + 1, dim=1, keepdim=True).values


def _top_k(flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep exactly ``k`` entries of every row of ``flat`` (rows, cols); ties -> lower index kept.

    The same set as the first ``k`` entries of a stable descending sort, in O(cols) per row and
    without a sort: keep everything above the row's k-th largest score, then the first ``missing``
    entries equal to it, found by a prefix count of the ties (``missing`` stays on the device, so
    no row waits for the host). Returns ``(keep, threshold)``: bool (rows, cols) and the (rows, 1)
    thresholds, None when ``k`` is 0 or ``cols`` and nothing had to be ranked.
    """
    rows, cols = flat.shape
    if k <= 0:
        return torch.zeros_like(flat, dtype=torch.bool), None
    if k >= cols:
        return torch.ones_like(flat, dtype=torch.bool), None
    count = _count_dtype(cols)
    threshold = _kth_largest(flat, k)
    keep = flat > threshold
    missing = k - keep.sum(dim=1, keepdim=True, dtype=count)    # (rows, 1), >= 1
    ties = flat == threshold
    ties &= ties.cumsum(dim=1, dtype=count) <= missing
    keep |= ties
    return keep, threshold


def top_k_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (rows, cols) on the device of ``scores`` (rows, cols): exactly ``k`` kept per row.

    The kernel behind every count-based scope (ties -> lower index kept), for callers that select
    in a hot loop on a GPU (one block of SparseGPT): no checks, no host synchronisation; NaN
    scores give unspecified rows. The complement, ``~top_k_rows(s, cols - k)``, marks the ``k``
    lowest of each row with the higher index pruned among ties.
    """
    return _top_k(scores, k)[0]


def top_n_of_m(groups: torch.Tensor, n: int) -> torch.Tensor:
    """Keep the ``n`` best of every row of ``groups`` (G, m); ties -> lower index kept.

    For small ``m`` a row is too short for a selection kernel to pay off, so each entry's rank in
    a stable descending order is counted directly: entry ``i`` is beaten by every ``j`` with a
    higher score or an equal score and ``j < i``. One comparison per pair ``j < i`` settles both
    directions (``s_j >= s_i`` means ``j`` beats ``i``, otherwise ``i`` beats ``j``), so the loop
    runs over the m·(m-1)/2 column pairs — never over rows — on strided views, with a uint8 rank.
    Any strides work: ``top_n_of_m(s.t(), n)`` ranks the columns of an (m, G) layout in place.
    Like `top_k_rows`: no checks, no host synchronisation, NaN gives unspecified groups.
    """
    m = groups.shape[1]
    if m > _PAIRWISE_MAX_M:
        return _top_k(groups, n)[0]
    if groups.shape[0] * m * m <= _BROADCAST_MAX.get(groups.device.type, 0):
        return _top_n_of_m_broadcast(groups, n)
    # rank_p starts at m-1-p ("beaten by every later entry") and loses one per later entry it beats
    rank = torch.arange(m, device=groups.device).flip(0).to(torch.uint8).expand(groups.shape[0], m).contiguous()
    for j in range(m):
        for i in range(j + 1, m):
            j_beats_i = (groups[:, j] >= groups[:, i]).view(torch.uint8)
            rank[:, i] += j_beats_i
            rank[:, j] -= j_beats_i
    return rank < n


def _top_n_of_m_broadcast(groups: torch.Tensor, n: int) -> torch.Tensor:
    """`top_n_of_m` by one broadcast: ``beats[g, j, i]`` = entry j outranks entry i (a higher score,
    or an equal one at a lower index), from (G, m, m) comparisons; keep the entries fewer than n beat."""
    m = groups.shape[1]
    key = (m, groups.device)
    if key not in _UPPER:       # j < i, built once per (m, device)
        _UPPER[key] = torch.ones(m, m, dtype=torch.bool, device=groups.device).triu(1).unsqueeze(0)
    j_side, i_side = groups.unsqueeze(2), groups.unsqueeze(1)
    beats = torch.where(_UPPER[key], j_side >= i_side, j_side > i_side)
    return beats.sum(1) < n


# ------------------------------------------------------------------------------------------------
# checks that need a tensor's value: flags on the device, read once at the end
# ------------------------------------------------------------------------------------------------
@dataclass
class _Checks:
    """Problem flags kept on the device, in the order they are reported: every layer's NaN flag
    (added while preparing the scores), then the row checks."""

    flags: list[tuple[torch.Tensor, str]] = field(default_factory=list)

    def add(self, flag: torch.Tensor, message: str) -> None:
        """``flag``: 0-dim bool tensor on any device, True when ``message`` applies."""
        self.flags.append((flag, message))

    def raise_first(self) -> None:
        """One host read per device (a bool vector), then the first problem as a TicketlabError."""
        by_device: dict[torch.device, list[int]] = {}
        for index, (flag, _) in enumerate(self.flags):
            by_device.setdefault(flag.device, []).append(index)
        raised = [False] * len(self.flags)
        for indices in by_device.values():
            values = torch.stack([self.flags[i][0] for i in indices]).tolist()
            for i, value in zip(indices, values):
                raised[i] = bool(value)
        for (_, message), bad in zip(self.flags, raised):
            if bad:
                raise TicketlabError(message)


def _prepared(scores: Mapping[str, torch.Tensor], within: Mask | None, checks: _Checks | None) -> dict[str, torch.Tensor]:
    """Scores, on their own devices, with already-pruned weights set to -inf; NaN flagged in ``checks``.

    Floating scores keep their dtype (converting is monotone, so it would not change a ranking,
    only cost a copy); integer or bool scores become float64 so that -inf can mark pruned weights.
    ``within`` (a CPU `Mask`) travels to the device without blocking the host.
    """
    out = {}
    for name, score in scores.items():
        s = score.detach()
        if not s.is_floating_point():
            s = s.to(torch.float64)
        if checks is not None:
            checks.add(torch.isnan(s).any(), f"The scores for {name!r} contain NaN, so no ranking is possible.")
        if within is not None:
            if name not in within or within[name].shape != s.shape:
                raise TicketlabError(f"The current mask does not cover {name!r} with shape {tuple(s.shape)}.")
            s = s.masked_fill(~within[name].to(s.device, non_blocking=True), float("-inf"))
        out[name] = s
    return out


def _available(name: str, scores: torch.Tensor, within: Mask | None) -> int:
    return int(within[name].sum()) if within is not None else scores.numel()


# ------------------------------------------------------------------------------------------------
# the routine
# ------------------------------------------------------------------------------------------------
def select(
    scores: Mapping[str, torch.Tensor],
    keep: int | Mapping[str, int] | None = None,
    *,
    scope: Scope = "layer",
    pattern: NMPattern | None = None,
    within: Mask | None = None,
) -> Mask:
    """Keep the highest-scoring weights.

    Args:
        scores: name -> score tensor (any shape); higher means more worth keeping.
        keep: for ``scope="global"`` the total number of weights to keep (int); for ``"layer"``
            a per-layer count (dict, or one int for every layer); for ``"row"`` the per-layer
            count, which must be divisible by the layer's number of rows. Ignored with ``pattern``.
        scope: the comparison group (see module docstring).
        pattern: N:M structure instead of a count.
        within: the current mask; only its kept weights are candidates.

    Returns a `Mask` (on the CPU, like every `Mask`) with exactly the requested number of True
    entries. The selection runs where the scores are (`select_tensors`); on a GPU the checks cost
    one read of a few flags and the `Mask` one copy per layer to the host.
    """
    return Mask(select_tensors(scores, keep, scope=scope, pattern=pattern, within=within))


def select_tensors(
    scores: Mapping[str, torch.Tensor],
    keep: int | Mapping[str, int] | None = None,
    *,
    scope: Scope = "layer",
    pattern: NMPattern | None = None,
    within: Mask | None = None,
    check: bool = True,
) -> dict[str, torch.Tensor]:
    """`select`, returning name -> bool keep tensor on the device of that layer's scores.

    With ``check=True`` the problems that need a tensor's value (NaN scores; a row that has fewer
    candidates than its quota) raise a TicketlabError naming the layer after all the selection
    work is queued, at the cost of one host synchronisation per device (on the CPU it costs
    nothing). With ``check=False`` nothing waits for the device at all; the caller vouches that
    the scores are NaN-free (e.g. it checked the weights and statistics they come from), and a
    layer that breaks that promise gets a mask of its shape with unspecified contents.

    Global scope ranks all layers in one tensor: on their common device, or on the CPU if the
    layers live on different devices; the returned tensors are then views of one keep vector.
    Errors found from the arguments alone (counts, shapes, N:M divisibility) are raised at once,
    before the flagged ones, whatever the layer order.
    """
    checks = _Checks() if check else None
    prepared = _prepared(scores, within, checks)
    if pattern is not None:
        out = {name: _select_nm(s, pattern, name) for name, s in prepared.items()}
    elif keep is None:
        raise TicketlabError("select() needs either a number of weights to keep or an N:M pattern.")
    elif scope == "global":
        out = _select_global(prepared, keep, within)
    elif scope in ("layer", "row"):
        out = _select_layers(prepared, keep, scope, within, checks)
    else:
        raise TicketlabError(f"Unknown selection scope {scope!r}; choose one of {', '.join(SCOPES)}.")
    if checks is not None:
        checks.raise_first()
    return out


def _select_global(prepared: dict[str, torch.Tensor], keep: int | Mapping[str, int], within: Mask | None) -> dict[str, torch.Tensor]:
    """One ranking over every layer, as one row of all their scores."""
    if not isinstance(keep, int):
        raise TicketlabError("Global selection takes one total count of weights to keep.")
    available = sum(_available(n, s, within) for n, s in prepared.items())
    _check_count(keep, available, "the whole model")
    devices = {s.device for s in prepared.values()}
    device = devices.pop() if len(devices) == 1 else torch.device("cpu")
    flat = torch.cat([s.to(device).flatten() for s in prepared.values()]) if prepared else torch.zeros(0)
    chosen = _top_k(flat.view(1, -1), keep)[0].view(-1)
    out, offset = {}, 0
    for name, s in prepared.items():
        out[name] = chosen[offset: offset + s.numel()].view(s.shape)
        offset += s.numel()
    return out


def _select_layers(prepared: dict[str, torch.Tensor], keep: int | Mapping[str, int], scope: str,
                   within: Mask | None, checks: _Checks | None) -> dict[str, torch.Tensor]:
    """Per-layer counts: the top ``k`` of each layer (``"layer"``) or of each of its rows (``"row"``)."""
    counts = {n: keep for n in prepared} if isinstance(keep, int) else dict(keep)
    missing = [n for n in prepared if n not in counts]
    if missing:
        raise TicketlabError(f"No keep count was given for layer {missing[0]!r}.")
    out = {}
    for name, s in prepared.items():
        k = counts[name]
        _check_count(k, _available(name, s, within), repr(name))
        out[name] = _select_rows(s, k, name, checks) if scope == "row" else _top_k(s.reshape(1, -1), k)[0].view(s.shape)
    return out


def _check_count(k: int, available: int, where: str) -> None:
    if not 0 <= k <= available:
        raise TicketlabError(f"Cannot keep {k} weights in {where}: only {available} are available.")


def _select_rows(scores: torch.Tensor, k: int, name: str, checks: _Checks | None) -> torch.Tensor:
    """Keep ``k / rows`` weights in every output row (dim 0) of one layer.

    A row whose quota reaches its already-pruned (-inf) weights would keep some of them: that is
    flagged, and it happens exactly when some row's threshold (its quota-th largest score) is -inf.
    """
    rows = scores.shape[0]
    if k % rows:
        raise TicketlabError(f"Row-wise selection in {name!r} needs a count divisible by its {rows} rows (got {k}).")
    per_row = k // rows
    flat = scores.reshape(rows, -1)
    keep, threshold = _top_k(flat, per_row)
    if checks is not None and per_row > 0:
        lowest_kept = threshold if threshold is not None else flat.amin(dim=1)
        checks.add(torch.isneginf(lowest_kept).any(),
                   f"Row-wise selection in {name!r} would keep weights that are already pruned.")
    return keep.view(scores.shape)


def _select_nm(scores: torch.Tensor, pattern: NMPattern, name: str) -> torch.Tensor:
    """Keep the ``n`` best of every ``m`` consecutive weights along the input dimension."""
    flat = scores.reshape(scores.shape[0], -1) if scores.dim() > 1 else scores.reshape(1, -1)
    if flat.shape[1] % pattern.m:
        raise TicketlabError(
            f"Layer {name!r} has {flat.shape[1]} inputs, not a multiple of {pattern.m}, so {pattern.n}:{pattern.m} cannot apply."
        )
    return top_n_of_m(flat.reshape(-1, pattern.m), pattern.n).view(scores.shape)


# ------------------------------------------------------------------------------------------------
# groups: blocks, channels, heads (`ticketlab.structure`)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupTarget:
    """How many groups a `select_groups` call keeps; exactly one field is set.

    ``per_family``: family name -> groups it keeps (per-layer selection); ``total``: groups kept
    over all families, ranked together (global selection by count); ``weights``: global selection
    by a budget in weights — the lowest-scoring groups go until at most ``weights`` weights are
    kept (a group is indivisible, so the count lands at or just below the budget)."""

    per_family: Mapping[str, int] | None = None
    total: int | None = None
    weights: int | None = None

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.per_family, self.total, self.weights)) != 1:
            raise TicketlabError("A group target needs exactly one of per_family, total or weights.")


def select_groups(scores: Mapping[str, torch.Tensor], layout: GroupLayout, target: GroupTarget, *,
                  within: Mask | None = None, aggregate: str = "sum",
                  generator: torch.Generator | None = None, invert: bool = False) -> Mask:
    """Keep the highest-scoring *groups* of ``layout`` (blocks, channels, heads) and return the mask.

    ``scores`` are the per-weight scores a method computes (name -> tensor); a group's score is
    their ``aggregate`` over its weights (`ticketlab.groups.Family.scores`: ``"l2"`` for magnitude,
    ``"sum"`` for saliencies, ``"random"`` for a seeded draw per group). Per family the groups are
    ranked by that score; a global ranking (``total`` or ``weights``) compares groups of different
    families per weight (`_per_weight`: the mean or root mean square over the group's weights), so
    that a layer whose groups are larger is not pruned last merely for being large. Groups with no
    weight left in ``within`` are gone and never come back; ties keep the lower group index (and,
    globally, the earlier family). No family keeps fewer than its ``minimum`` groups (a layer
    never loses all its channels): a target that would need it is one sentence naming the layer.
    The returned mask covers ``layout.shapes`` (``within``'s weights outside any group are kept as
    they are). ``invert`` keeps the lowest-scoring groups instead (the inversion sanity check of
    Frankle et al. 2021: the group scores are negated, not the weights', whose L2 norm would not
    change).
    """
    names = list(layout.shapes)
    base = {n: (within[n].clone() if within is not None else torch.ones(layout.shapes[n], dtype=torch.bool))
            for n in names}
    ranked = _family_scores(scores, layout, base, aggregate, generator, invert)
    if target.per_family is not None:
        keep = {f.name: _keep_per_family(f, ranked[f.name], target.per_family) for f in layout}
        for family in layout:
            family.restrict(base, keep[family.name])
        return Mask(base)
    ranked = _per_weight(layout, ranked, aggregate)
    if target.total is not None:
        keep = _keep_total(layout, ranked, target.total)
    else:
        keep = _keep_within_budget(layout, ranked, base, target.weights)
    for family in layout:
        family.restrict(base, keep[family.name])
    return Mask(base)


def _family_scores(scores: Mapping[str, torch.Tensor], layout: GroupLayout, base: dict[str, torch.Tensor],
                   aggregate: str, generator: torch.Generator | None, invert: bool) -> dict[str, torch.Tensor]:
    """Family -> ``(size,)`` float64 group scores (negated with ``invert``), -inf for groups already
    gone; NaN refused."""
    out = {}
    for family in layout:
        values = family.scores(scores, aggregate, generator)
        values = -values if invert else values
        if bool(torch.isnan(values).any()):
            raise TicketlabError(f"The scores of {family.name!r} contain NaN, so no ranking of its groups is possible.")
        out[family.name] = values.masked_fill(~family.alive(base), float("-inf"))
    return out


def _per_weight(layout: GroupLayout, ranked: dict[str, torch.Tensor], aggregate: str) -> dict[str, torch.Tensor]:
    """Group scores made comparable across families of different group sizes (a global ranking):
    a sum becomes a mean over the group's weights, an L2 norm a root mean square; random draws
    stay as they are. Within one family every group has the same size, so nothing changes there."""
    if aggregate == "random":
        return ranked
    out = {}
    for family in layout:
        n = float(family.group_weights(layout.shapes))
        out[family.name] = ranked[family.name] / (math.sqrt(n) if aggregate == "l2" else n)
    return out


def _alive_count(values: torch.Tensor) -> int:
    return int(torch.isfinite(values).sum()) + int(torch.isposinf(values).sum())


def _keep_per_family(family: Family, values: torch.Tensor, counts: Mapping[str, int]) -> torch.Tensor:
    if family.name not in counts:
        raise TicketlabError(f"No group count was given for {family.name!r}.")
    k, alive = counts[family.name], _alive_count(values)
    if k < family.minimum:
        raise TicketlabError(f"Keeping {k} of the {family.size} {family.unit}s of {family.name!r} would remove "
                             f"every {family.unit} of a layer; prune less (a lower rate or a higher density).")
    if k > alive:
        raise TicketlabError(f"Cannot keep {k} {family.unit}s of {family.name!r}: only {alive} are left.")
    return _top_k(values.view(1, -1), k)[0].view(-1)


def _forced(layout: GroupLayout, ranked: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each family's best ``minimum`` alive groups, which a global selection never drops."""
    forced = {}
    for family in layout:
        values = ranked[family.name]
        k = min(family.minimum, _alive_count(values))
        forced[family.name] = _top_k(values.view(1, -1), k)[0].view(-1) if k else torch.zeros_like(values, dtype=torch.bool)
    return forced


def _keep_total(layout: GroupLayout, ranked: Mapping[str, torch.Tensor], total: int) -> dict[str, torch.Tensor]:
    """``total`` groups over all families: each family's forced groups, then the best of the rest."""
    forced = _forced(layout, ranked)
    alive = sum(_alive_count(v) for v in ranked.values())
    must = sum(int(f.sum()) for f in forced.values())
    if not must <= total <= alive:
        raise TicketlabError(f"Cannot keep {total} groups: between {must} (one per layer) and {alive} are possible.")
    flat = torch.cat([ranked[f.name].masked_fill(forced[f.name], float("inf")) for f in layout])
    chosen = _top_k(flat.view(1, -1), total)[0].view(-1)
    out, offset = {}, 0
    for family in layout:
        out[family.name] = chosen[offset: offset + family.size]
        offset += family.size
    return out


def _keep_within_budget(layout: GroupLayout, ranked: Mapping[str, torch.Tensor], base: dict[str, torch.Tensor],
                        budget: int | None) -> dict[str, torch.Tensor]:
    """Drop the lowest-scoring groups (over all families; ties: earlier family, lower index) until
    at most ``budget`` weights are kept, never below a family's minimum. Counts follow
    `GroupLayout.removal_cost`, exact for masks made of whole groups."""
    assert budget is not None
    keep = {f.name: torch.isfinite(ranked[f.name]) | torch.isposinf(ranked[f.name]) for f in layout}
    along = layout.extents()
    families = list(layout)
    for family in families:   # groups already gone shrink the extents first
        for _ in range(family.size - int(keep[family.name].sum())):
            layout.removal_cost(family, along)
    kept = sum(int(t.sum()) for t in base.values())
    order = sorted(((float(v), i, g) for i, f in enumerate(families)
                    for g, v in enumerate(ranked[f.name].tolist()) if keep[f.name][g]))
    left = {f.name: int(keep[f.name].sum()) for f in families}
    for _, i, g in order:
        if kept <= budget:
            break
        family = families[i]
        if left[family.name] <= family.minimum:
            continue
        kept -= layout.removal_cost(family, along)
        keep[family.name][g] = False
        left[family.name] -= 1
    if kept > budget:
        raise TicketlabError(f"Cannot keep only {budget} weights by removing whole groups: with one group left per "
                             f"layer {kept} remain; prune at a higher density.")
    return keep


def keep_counts_after_pruning(within: Mask, rates: Mapping[str, float]) -> dict[str, int]:
    """Per-layer counts left after pruning ``rates[name]`` of each layer's *remaining* weights.

    The number pruned is ``round_half_up(rate * remaining)``, so a layer keeps
    ``remaining - that``. Layers absent from ``rates`` keep everything.
    """
    counts = {}
    for name, tensor in within.items():
        remaining = int(tensor.sum())
        rate = rates.get(name, 0.0)
        counts[name] = remaining - math.floor(rate * remaining + 0.5)
    return counts


def density_to_count(density: float, total: int) -> int:
    """Number of weights to keep so that ``count / total`` is ``density``, rounded half up."""
    return math.floor(density * total + 0.5)
