"""SparseGPT's blocked column sweep over a (rows, cols) weight matrix, in place.

Per block of ``blocksize`` columns: copy it transposed into fixed buffers (`_Workspace`), choose
its mask (unstructured: each layer's exact count, `_choose_unstructured`; N:M: each group when it
is reached, `_choose_nm_group`), run the column loop of OBS updates (`_run_block`), write it back
and update the later columns with one matrix product. Only kernel launches: nothing is read back
to the host, so on a GPU the loop never waits. See `ticketlab.methods.sparsegpt` for the algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...select import NMPattern, top_k_rows, top_n_of_m

#: Columns per inner sub-block (rounded up to a multiple of M for N:M patterns).
_LEAF_COLUMNS = 16


def block_prune_counts(rows: int, cols: int, sparsity: float, blocksize: int) -> list[int]:
    """Weights to prune in each column block so that the layer total is exactly ``round(sparsity·rows·cols)``.

    Block ``[start, end)`` gets ``round(K·end/cols) - round(K·start/cols)`` (round half up, in
    integer arithmetic); the sum telescopes to ``K``.
    """
    total = rows * cols
    K = int(sparsity * total + 0.5)
    K = min(max(K, 0), total)

    def cum(end: int) -> int:
        return (2 * K * end + cols) // (2 * cols)

    return [cum(min(s + blocksize, cols)) - cum(s) for s in range(0, cols, blocksize)]


def lowest_k_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (L, n), on the device of ``scores`` (L, n): the ``k`` lowest entries of every row.

    Every row is one comparison group (one layer's block in a stacked pass); the complement of the
    shared selection kernel `ticketlab.select.top_k_rows` (among equal scores the lower index is
    kept, so the higher one is pruned). Nothing is read back to the host. Any real dtype: the
    stacked pass hands it the int32 bit patterns of its non-negative fp32 scores.
    """
    n = scores.shape[1]
    return ~top_k_rows(scores, n - max(0, min(k, n)))


def nm_prune_mask(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Bool (m, R): the ``m - n`` lowest entries of every column of ``scores`` (m, R), i.e. of every
    N:M group in the transposed working layout; the complement of the shared kernel
    `ticketlab.select.top_n_of_m` on the (R, m) view (ties: the lower index is kept)."""
    return ~top_n_of_m(scores.t(), n).t()


@dataclass(frozen=True)
class _Column:
    """Pre-built views for one column j of the block buffers (R = stacked rows)."""

    w: torch.Tensor                     # (R,) B[j]: the column's current weights
    scale: torch.Tensor                 # (R,) S[j]: 1/U_jj where pruned, else 0
    err: torch.Tensor                   # (R,) E[j]: the column's OBS error
    tail: torch.Tensor | None           # (t, R) B[j+1:leaf_end], or None for a leaf's last column
    u_tail: torch.Tensor | None         # (t,) Ub[j, j+1:leaf_end]
    group: tuple[torch.Tensor, ...] | None  # N:M group starting here: rows j:j+m of B, U_jj², 1/U_jj, S


@dataclass(frozen=True)
class _Leaf:
    """One sub-block of columns [start, stop) and the views of its lazy update of the block's rest."""

    columns: list[_Column]
    rest: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None   # B[stop:], Ub[start:stop, stop:]ᵀ, E[start:stop]


class _Workspace:
    """Fixed buffers for the block being pruned, and views into them built once per block width.

    The column loop runs two small kernels per column (error, rank-1 update of the leaf); on CPU
    creating the half-dozen views they need would cost as much as the kernels. So each block's
    columns are copied into the same buffers, whose views are built once, not once per column.
    Buffers: ``B``, ``E``, ``S`` (blocksize, R) fp32 — the block's weights with column j as the
    contiguous row j, its OBS errors and the error scale; ``P`` (blocksize, R) bool, pruned;
    ``Ub`` (blocksize, blocksize) the block's part of U; ``dsq``, ``inv_d`` (blocksize, 1) U_jj²
    and 1/U_jj; ``stage`` (R, blocksize), which makes the transposing copy from the (R, cols)
    weights about three times faster on CPU than a direct strided-to-transposed copy.
    """

    def __init__(self, rows: int, blocksize: int, leaf: int, m: int | None, device: torch.device):
        f32 = dict(dtype=torch.float32, device=device)
        self.B = torch.empty(blocksize, rows, **f32)
        self.E = torch.empty(blocksize, rows, **f32)
        self.S = torch.empty(blocksize, rows, **f32)
        self.P = torch.empty(blocksize, rows, dtype=torch.bool, device=device)
        self.Ub = torch.empty(blocksize, blocksize, **f32)
        self.dsq = torch.empty(blocksize, 1, **f32)
        self.inv_d = torch.empty(blocksize, 1, **f32)
        self.stage = torch.empty(rows, blocksize, **f32)
        self.leaf, self.m = leaf, m
        self._plans: dict[int, list[_Leaf]] = {}

    def plan(self, width: int) -> list[_Leaf]:
        """The leaves and column views for a block of ``width`` columns (cached: at most two widths)."""
        if width not in self._plans:
            self._plans[width] = [self._leaf(l1, min(l1 + self.leaf, width), width) for l1 in range(0, width, self.leaf)]
        return self._plans[width]

    def _leaf(self, l1: int, l2: int, width: int) -> _Leaf:
        B, E, S, Ub, m = self.B, self.E, self.S, self.Ub, self.m
        columns = []
        for j in range(l1, l2):
            last = j + 1 == l2
            group = None
            if m is not None and j % m == 0:
                g = slice(j, j + m)
                group = (B[g], self.dsq[g], self.inv_d[g], S[g])
            columns.append(_Column(B[j], S[j], E[j], None if last else B[j + 1:l2], None if last else Ub[j, j + 1:l2], group))
        rest = (B[l2:width], Ub[l1:l2, l2:width].t(), E[l1:l2]) if l2 < width else None
        return _Leaf(columns, rest)

    def load(self, W: torch.Tensor, U: torch.Tensor, i1: int, i2: int) -> None:
        """Copy columns [i1, i2) of ``W`` (R, cols) into ``B`` (transposed) and the block's part of ``U``."""
        b = i2 - i1
        stage = self.stage[:, :b]
        stage.copy_(W[:, i1:i2])
        self.B[:b].copy_(stage.t())
        Ub = U[i1:i2, i1:i2]
        self.Ub[:b, :b].copy_(Ub)
        d = torch.diagonal(Ub).unsqueeze(1)
        torch.square(d, out=self.dsq[:b])
        torch.reciprocal(d, out=self.inv_d[:b])

    def pruned_from_scale(self, width: int) -> None:
        """``P = S != 0``: exact, as 1/U_jj > 0 for the finite, positive U_jj that `inverse_hessian_factor` ensures."""
        torch.ne(self.S[:width], 0.0, out=self.P[:width])

    def store(self, W: torch.Tensor, pruned: torch.Tensor, i1: int, i2: int) -> None:
        """Zero the pruned weights of the block and write it back into columns [i1, i2) of ``W`` and ``pruned``."""
        b = i2 - i1
        B, P = self.B[:b], self.P[:b]
        B.addcmul_(B, P, value=-1.0)      # w - w·1 = +0.0 exactly where pruned; 4x faster than masked_fill_ on CPU
        W[:, i1:i2].copy_(B.t())
        pruned[:, i1:i2].copy_(self.P[:b].t())


def _run_block(plan: list[_Leaf], pattern: NMPattern | None) -> None:
    """The OBS updates of one block, column by column, in leaves with lazy updates between them.

    Column j: ``E[j] = B[j] · S[j]`` (the error ``(w - q)/U_jj``), then the later columns of the
    leaf move by ``-U[j, j'] · E[j]``; after a leaf, the rest of the block moves by one matrix
    product of the leaf's errors. For N:M the group starting at column j is chosen first, from the
    weights as updated so far. Only kernel launches: nothing is read back to the host.
    """
    for leaf in plan:
        for col in leaf.columns:
            if col.group is not None:
                _choose_nm_group(col.group, pattern.n)
            torch.mul(col.w, col.scale, out=col.err)
            if col.tail is not None:
                col.tail.addr_(col.u_tail, col.err, alpha=-1.0)
        if leaf.rest is not None:
            rest, u_rest_t, errs = leaf.rest
            rest.addmm_(u_rest_t, errs, alpha=-1.0)


def _choose_nm_group(group: tuple[torch.Tensor, ...], n: int) -> None:
    """Prune the m - n lowest ``w² / U_jj²`` of every row's group of m columns: error scale 1/U_jj there, else 0.

    Only the scale is written; the block's pruned mask is read off it afterwards
    (`_Workspace.pruned_from_scale`), one operation per block instead of one per group.
    """
    w, dsq, inv_d, scale = group
    scores = w.square().div_(dsq)                      # (m, R), the same arithmetic as w² / U_jj²
    torch.mul(nm_prune_mask(scores, n), inv_d, out=scale)   # exactly 1/U_jj or 0 (faster than where)


def _choose_unstructured(ws: _Workspace, width: int, runs: list[tuple[int, int, int, list[int]]], block: int) -> None:
    """Mask of one block for every stacked layer: its own exact count, ranked within the layer only.

    ``runs``: (first row, layers, rows per layer, per-block counts) for consecutive layers of
    equal shape and sparsity, which are ranked together by one `lowest_k_rows` (rows = layers).
    Each layer's group is its (width x rows) sub-matrix flattened column-major in W — the same
    order `lowest_k` sees in a one-layer pass, so ties fall the same way.
    """
    B, P = ws.B[:width], ws.P[:width]
    scores = B.square().div_(ws.dsq[:width])           # (width, R): w² / U_jj²
    for r0, layers, rows, counts in runs:
        r1 = r0 + layers * rows
        groups = scores[:, r0:r1].reshape(width, layers, rows).transpose(0, 1).reshape(layers, width * rows)
        # scores >= 0 order like their bit patterns as int32, which numpy selects twice as fast
        mask = lowest_k_rows(groups.view(torch.int32), counts[block])
        P[:, r0:r1].unflatten(1, (layers, rows)).transpose(0, 1).copy_(mask.view(layers, width, rows))
    torch.mul(P, ws.inv_d[:width], out=ws.S[:width])   # exactly 1/U_jj or 0 (faster than where)


def layer_runs(row_counts: list[int], sparsities: list[float], cols: int, blocksize: int) -> list[tuple[int, int, int, list[int]]]:
    """Group consecutive layers of equal rows and sparsity: (first row, layers, rows, per-block counts)."""
    runs: list[tuple[int, int, int, list[int]]] = []
    r0, previous = 0, None
    for rows, sparsity in zip(row_counts, sparsities):
        if previous == (rows, sparsity):
            first, layers, _, counts = runs[-1]
            runs[-1] = (first, layers + 1, rows, counts)
        else:
            runs.append((r0, 1, rows, block_prune_counts(rows, cols, sparsity, blocksize)))
        previous = (rows, sparsity)
        r0 += rows
    return runs


def sweep(W: torch.Tensor, U: torch.Tensor, runs: list[tuple[int, int, int, list[int]]] | None,
           pattern: NMPattern | None, blocksize: int) -> torch.Tensor:
    """The blocked SparseGPT pass over ``W`` (R, cols) in place; returns the pruned mask (R, cols).

    ``runs`` (unstructured; see `_choose_unstructured`) or ``pattern`` (N:M) says how masks are
    chosen. Per block: load it into the workspace, choose its mask (unstructured), run the column
    loop, write it back, then update all later columns by its errors (lazy batch update).
    """
    R, cols = W.shape
    m = pattern.m if pattern is not None else None
    leaf = _LEAF_COLUMNS if m is None else m * max(1, -(-_LEAF_COLUMNS // m))
    ws = _Workspace(R, min(blocksize, cols), leaf, m, W.device)
    pruned = torch.empty(W.shape, dtype=torch.bool, device=W.device)
    for block, i1 in enumerate(range(0, cols, blocksize)):
        i2 = min(i1 + blocksize, cols)
        ws.load(W, U, i1, i2)
        if runs is not None:
            _choose_unstructured(ws, i2 - i1, runs, block)
        _run_block(ws.plan(i2 - i1), pattern)
        if pattern is not None:
            ws.pruned_from_scale(i2 - i1)
        ws.store(W, pruned, i1, i2)
        if i2 < cols:
            W[:, i2:].addmm_(ws.E[:i2 - i1].t(), U[i1:i2, i2:], alpha=-1.0)
    return pruned


__all__ = ["block_prune_counts", "layer_runs", "lowest_k_rows", "nm_prune_mask", "sweep"]
