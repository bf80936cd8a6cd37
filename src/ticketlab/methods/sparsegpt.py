"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with optimal-brain-surgeon reconstruction.

For a linear layer ``y = W x`` with ``W`` of shape (rows, cols) and calibration inputs ``X`` (cols,
tokens), SparseGPT prunes ``W`` column by column and, after each pruned weight, updates the weights
of the *later* columns so that ``Ŵ X`` stays close to ``W X``. The update uses ``H = (2/n) X Xᵀ``
(cols, cols), the Hessian of the layer's squared reconstruction error, through the upper Cholesky
factor ``U`` of ``H⁻¹``: pruning column ``j`` of a row gives the error ``e = (w_j - q_j) / U_jj``
and the remaining columns of that row move by ``-e · U[j, j+1:]``.

Algorithm, as the paper and its reference code define it:

1. ``H`` in fp32; dead inputs (``H_jj = 0``) get ``H_jj = 1`` and their weights set to zero;
2. add ``percdamp · mean(diag H)`` to the diagonal; ``U = chol(H⁻¹)ᵀ`` (upper);
   a failed Cholesky retries with ten times more damping (a few times), then fails clearly —
   never silently with the identity;
3. columns in blocks of ``blocksize`` (128): at the start of a block choose its mask by
   ``w² / U_jj²`` (unstructured: the lowest scores of the block; N:M: the N-M lowest of every M
   consecutive columns of a row, chosen when the group is reached, from the updated weights);
4. inside the block apply the OBS updates column by column; after the block, update all later
   columns at once with the block's accumulated errors (lazy batch update).

Two things differ from the reference code, neither changing the algorithm:

* **Exact sparsity.** The reference prunes ``quantile(sparsity)`` of every block, which overshoots
  by one weight per block (``<=`` threshold) and can drift with ties. Here block ``b`` prunes
  ``k_b = round(K·end_b/cols) - round(K·start_b/cols)`` weights, where ``K = round(sparsity·rows·cols)``:
  the counts are proportional to the block widths and add up to exactly ``K`` for the layer. The
  ``k_b`` lowest scores of the block are chosen with the rule of the shared
  `ticketlab.select.select` (exact k, the lower index kept among ties).
* **Speed** (same arithmetic, regrouped; measured by ``benchmarks/llm_layer_pruning.py``):
  ``U`` comes from one Cholesky factorisation of the order-reversed ``H`` and one triangular
  inverse (by recursive halving, i.e. matrix products) instead of Cholesky -> cholesky_inverse ->
  Cholesky; the per-column updates inside a 128-column block are themselves applied lazily in
  sub-blocks of 16 columns (the same rank-1 updates, grouped into small matrix products); each
  block is copied transposed into fixed buffers, so that a column is one contiguous row and the
  views the column loop needs are built once rather than per column; layers that read the same
  inputs (q/k/v, gate/up) can be pruned in one pass over their stacked rows
  (`sparsegpt_prune_stacked`: rows are independent given ``H``; masks are still chosen per
  layer); the k lowest scores of a block are found with ``kthvalue`` (`lowest_k_rows`) and the
  N:M groups of a column group are chosen for all rows by one vectorised comparison
  (`nm_prune_mask`) — both equal to the shared selection routine, ties included, and neither
  reads anything back to the host, so on a GPU the column loop is a stream of kernel launches
  with no synchronisation. The mask semantics (per 128-block, from the weights updated so far;
  N:M per group when it is reached) are unchanged, so the result equals the reference
  algorithm's up to floating-point rounding — which can flip the odd near-tied mask decision on
  ill-conditioned Hessians, as any reordering of the arithmetic does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TicketlabError
from ..select import NMPattern, select_tensors, top_k_rows, top_n_of_m
from ..targets import is_conv1d

#: Columns per inner sub-block (rounded up to a multiple of M for N:M patterns).
_LEAF_COLUMNS = 16
#: How many times a failed Cholesky factorisation is retried, each with 10x more damping.
_DAMPING_RETRIES = 4


def lower_triangular_inverse(L: torch.Tensor, leaf: int = 256) -> torch.Tensor:
    """``L⁻¹`` for a lower-triangular ``L`` (n, n), by recursive halving.

    ``[[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [-D⁻¹ C A⁻¹, D⁻¹]]``: about n³/3 multiply-adds, almost all of
    them in two large matrix products per level, against n³/2 in a triangular solve with an
    identity right-hand side (torch exposes no trtri). Twice as fast on 2048x2048 on CPU, with
    the same accuracy (relative error ~1e-7 in fp32 against fp64).
    """
    n = L.shape[0]
    if n <= leaf:
        return torch.linalg.solve_triangular(L, torch.eye(n, dtype=L.dtype, device=L.device), upper=False)
    h = n // 2
    Ai = lower_triangular_inverse(L[:h, :h], leaf)
    Di = lower_triangular_inverse(L[h:, h:], leaf)
    out = torch.zeros_like(L)
    out[:h, :h] = Ai
    out[h:, h:] = Di
    out[h:, :h] = -(Di @ (L[h:, :h] @ Ai))
    return out


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float = 0.01, *, name: str = "the layer") -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` with ``λ = percdamp · mean(diag H)``.

    ``hessian`` (cols, cols) must already have its dead diagonal entries set to 1. If a Cholesky
    factorisation fails (H numerically singular), λ is multiplied by 10 and the whole factorisation
    retried, up to `_DAMPING_RETRIES` times; then a `TicketlabError` names the layer.
    """
    H = hessian.to(torch.float32)
    if not bool(torch.isfinite(H).all()):
        raise TicketlabError(f"The calibration Hessian of {name} contains NaN or infinite values (the activations overflowed).")
    mean_diag = float(torch.diagonal(H).mean())
    damp = percdamp * mean_diag
    # Reversal trick: with J the order-reversing permutation and J H J = L Lᵀ (one Cholesky),
    # H⁻¹ = J L⁻ᵀ L⁻¹ J, so U = J L⁻¹ J is upper triangular with Uᵀ U = H⁻¹ — exactly the factor
    # the reference obtains with cholesky -> cholesky_inverse -> cholesky(upper), for one
    # Cholesky and one triangular inverse instead of two Choleskys and a full inverse.
    Hrev = H.flip(0, 1)            # a copy; the damping is added to its diagonal in place
    applied = 0.0
    for _ in range(_DAMPING_RETRIES + 1):
        Hrev.diagonal().add_(damp - applied)
        applied = damp
        L, info = torch.linalg.cholesky_ex(Hrev)
        if int(info) == 0:
            del Hrev
            U = lower_triangular_inverse(L).flip(0, 1)
            if bool(torch.isfinite(U).all()) and bool((torch.diagonal(U) > 0).all()):
                return U
            Hrev = H.flip(0, 1)
            applied = 0.0
        del L
        damp = damp * 10.0 if damp > 0 else 0.01 * mean_diag
    raise TicketlabError(
        f"The Hessian of {name} stays singular even with dampening {damp / 10.0 / max(mean_diag, 1e-30):.3g} x mean(diag H); "
        f"use more or more varied calibration data or a larger percdamp."
    )


def hessian_factor(hessian: torch.Tensor, percdamp: float = 0.01, *, name: str = "the layer") -> torch.Tensor:
    """``U`` for a raw ``Σ x xᵀ``: dead inputs (``H_jj = 0``) get ``H_jj = 1``, then `inverse_hessian_factor`."""
    H = hessian.detach().to(torch.float32)
    dead_idx = (torch.diagonal(H) == 0).nonzero().squeeze(1)
    if dead_idx.numel():
        H = H.clone()             # never modify the caller's statistics
        H[dead_idx, dead_idx] = 1.0
    return inverse_hessian_factor(H, percdamp, name=name)


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


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor (shape of ``scores``, on its device) marking the ``k`` lowest scores.

    The complement of the shared `select`'s keep set (layer scope, exact-k, lower index kept
    among ties), which finds its threshold with ``kthvalue`` (``topk`` on a GPU) rather than a
    full sort. On a GPU nothing waits for the device, once per block: NaN scores are refused
    (TicketlabError) only on the CPU, where the check is free.
    """
    n = scores.numel()
    keep = select_tensors({"block": scores}, n - max(0, min(k, n)), scope="layer", check=scores.device.type == "cpu")["block"]
    return ~keep


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


def _layer_runs(row_counts: list[int], sparsities: list[float], cols: int, blocksize: int) -> list[tuple[int, int, int, list[int]]]:
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


def _check_stack(weights: list[torch.Tensor], hessian: torch.Tensor, factor: torch.Tensor | None,
                 pattern: NMPattern | None, blocksize: int, label: str) -> int:
    """Validate a stack of layers sharing one Hessian; returns the common number of inputs (cols)."""
    if not weights:
        raise TicketlabError("SparseGPT needs at least one layer to prune.")
    cols = weights[0].shape[1]
    for w in weights:
        if w.dim() != 2 or w.shape[1] != cols or w.device != weights[0].device:
            raise TicketlabError(f"The layers {label} must be 2-D with the same number of inputs on the same device to be pruned together.")
    if hessian.shape != (cols, cols):
        raise TicketlabError(f"The Hessian of {label} has shape {tuple(hessian.shape)}, expected {(cols, cols)}.")
    if factor is not None and factor.shape != (cols, cols):
        raise TicketlabError(f"The precomputed factor for {label} has shape {tuple(factor.shape)}, expected {(cols, cols)}.")
    if pattern is not None and (cols % pattern.m or blocksize % pattern.m):
        raise TicketlabError(
            f"{label} has {cols} inputs and block size {blocksize}; both must be multiples of M={pattern.m} for {pattern.n}:{pattern.m}."
        )
    return cols


@torch.no_grad()
def sparsegpt_prune_stacked(
    weights: Sequence[torch.Tensor],
    hessian: torch.Tensor,
    *,
    sparsity: float | Sequence[float] | None = None,
    pattern: NMPattern | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    names: Sequence[str] | None = None,
    factor: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Prune several layers that read the same inputs (q/k/v, gate/up) in one SparseGPT pass.

    Why it is the same as pruning them one by one: the OBS updates act within an output row, so
    given the shared ``H`` the rows of all layers are independent and can be stacked into one
    (R, cols) matrix, R = Σ rows, and swept once — one column loop, one set of kernel launches,
    and matrix products three times as tall. The mask choice is kept per layer: unstructured,
    each layer prunes its own exact per-block count (`block_prune_counts`) ranked within its own
    (block x rows) sub-matrix; N:M groups lie within a row anyway. So the result equals
    `sparsegpt_prune` of each layer alone up to floating-point rounding of the regrouped products.

    Args:
        weights: L tensors (rows_l, cols), ``nn.Linear`` orientation, any float dtype, same device.
        hessian: (cols, cols) ``Σ x xᵀ`` of the shared inputs (any positive scale).
        sparsity / pattern: exactly one; ``sparsity`` may be one value or one per layer.
        blocksize, percdamp: as in `sparsegpt_prune`.
        names: the layers' names, for error messages.
        factor: optionally ``hessian_factor(hessian, percdamp)``, e.g. from a cache.

    Returns one ``(pruned_weight, keep)`` per layer: fp32 (rows_l, cols) and bool (rows_l, cols).
    The pruned weights are row slices of one (R, cols) buffer, which stays alive as long as any
    of them does. No input is modified. Nothing is read back to the host inside the loop.
    """
    weights = list(weights)
    label = ", ".join(names) if names else "the layers"
    if (sparsity is None) == (pattern is None):
        raise TicketlabError("SparseGPT needs exactly one of a sparsity or an N:M pattern.")
    cols = _check_stack(weights, hessian, factor, pattern, blocksize, label)
    device = weights[0].device
    U = factor if factor is not None else hessian_factor(hessian.to(device), percdamp, name=label)
    row_counts = [w.shape[0] for w in weights]
    runs = None
    if sparsity is not None:
        runs = _layer_runs(row_counts, _per_layer(sparsity, len(weights), label), cols, blocksize)
    W = _stacked_copy(weights, torch.diagonal(hessian).to(device) == 0)
    pruned = _sweep(W, U, runs, pattern, blocksize)
    out, r0 = [], 0
    for rows in row_counts:
        out.append((W[r0:r0 + rows], ~pruned[r0:r0 + rows]))
        r0 += rows
    return out


def _per_layer(sparsity: float | Sequence[float], layers: int, label: str) -> list[float]:
    """One sparsity per layer, from one value or a sequence of them."""
    values = [float(sparsity)] * layers if isinstance(sparsity, (int, float)) else [float(s) for s in sparsity]
    if len(values) != layers:
        raise TicketlabError(f"{len(values)} sparsities were given for {layers} layers ({label}).")
    return values


def _sweep(W: torch.Tensor, U: torch.Tensor, runs: list[tuple[int, int, int, list[int]]] | None,
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


def _stacked_copy(weights: list[torch.Tensor], dead: torch.Tensor) -> torch.Tensor:
    """(Σ rows, cols) fp32 copy of the stacked weights with the dead inputs' columns zeroed.

    Always a fresh buffer (never an alias of a caller's tensor, e.g. of a transposed GPT-2 Conv1D
    weight). ``dead`` (cols,) bool is applied as ``w - w·dead`` (+0.0 exactly where dead): no
    indexing, which would read the indices back to the host, and 4x faster than ``masked_fill_``.
    """
    rows = sum(w.shape[0] for w in weights)
    W = torch.empty(rows, weights[0].shape[1], dtype=torch.float32, device=weights[0].device)
    r0 = 0
    for w in weights:
        W[r0:r0 + w.shape[0]].copy_(w.detach())
        r0 += w.shape[0]
    return W.addcmul_(W, dead.unsqueeze(0), value=-1.0)


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float | None = None,
    pattern: NMPattern | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "the layer",
    factor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one layer with SparseGPT (a stack of one for `sparsegpt_prune_stacked`).

    Args:
        weight: (rows, cols) — output features x input features (``nn.Linear`` orientation).
        hessian: (cols, cols) — ``Σ x xᵀ`` over calibration tokens, any positive scale (the result
            is invariant to it, since the dampening is relative).
        sparsity / pattern: exactly one; unstructured sparsity is exact per layer.
        blocksize: columns per block; percdamp: relative dampening.
        factor: optionally ``hessian_factor(hessian, percdamp)`` computed once and shared by layers
            that see the same inputs (q/k/v, gate/up): the factorisation is the costly part.

    Returns ``(pruned_weight, keep)``: the reconstructed fp32 weight (rows, cols), exactly zero
    where ``keep`` (bool, rows x cols) is False. Neither input is modified.
    """
    return sparsegpt_prune_stacked([weight], hessian, sparsity=sparsity, pattern=pattern, blocksize=blocksize,
                                   percdamp=percdamp, names=[name], factor=factor)[0]


class SparseGPT:
    """The algorithm as one small object, for use outside the engine: ``add_batch``, ``prune``, ``free``.

    >>> algo = SparseGPT(layer)                # nn.Linear or GPT-2 Conv1D
    >>> for x in calibration_inputs:           # (..., in_features)
    ...     algo.add_batch(x)
    >>> keep = algo.prune(sparsity=0.5)        # writes the pruned weights into layer.weight
    >>> algo.free()
    """

    def __init__(self, layer: nn.Module):
        self.layer = layer
        self.transposed = is_conv1d(layer)
        weight = layer.weight
        self.columns = weight.shape[0] if self.transposed else weight.shape[1]
        self.H: torch.Tensor | None = torch.zeros(self.columns, self.columns, dtype=torch.float32, device=weight.device)
        self.nsamples = 0  # tokens seen

    @torch.no_grad()
    def add_batch(self, inp: torch.Tensor) -> None:
        """Accumulate ``H = (2/n) Σ x xᵀ`` (fp32) over the tokens of ``inp`` (..., in_features)."""
        if self.H is None:
            raise TicketlabError("This SparseGPT object has been freed.")
        x = inp.detach().reshape(-1, inp.shape[-1]).to(device=self.H.device, dtype=torch.float32)
        t = x.shape[0]
        if t == 0:
            return
        # running mean keeps the scale of H independent of the amount of data
        self.H.mul_(self.nsamples / (self.nsamples + t))
        self.nsamples += t
        self.H.addmm_(x.t(), x, alpha=2.0 / self.nsamples)

    @torch.no_grad()
    def prune(self, sparsity: float | None = None, pattern: NMPattern | str | None = None, *,
              blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
        """Prune the layer in place; returns the keep mask in the parameter's own orientation."""
        if self.H is None:
            raise TicketlabError("This SparseGPT object has been freed.")
        if isinstance(pattern, str):
            pattern = NMPattern.parse(pattern)
        param = self.layer.weight
        W = param.t() if self.transposed else param
        new_w, keep = sparsegpt_prune(W, self.H, sparsity=sparsity, pattern=pattern,
                                      blocksize=blocksize, percdamp=percdamp)
        if self.transposed:
            new_w, keep = new_w.t(), keep.t()
        param.copy_(new_w.to(param.dtype))
        return keep.contiguous()

    def free(self) -> None:
        """Release the Hessian."""
        self.H = None


__all__ = [
    "SparseGPT", "block_prune_counts", "hessian_factor", "inverse_hessian_factor", "lower_triangular_inverse", "lowest_k",
    "lowest_k_rows", "nm_prune_mask", "sparsegpt_prune", "sparsegpt_prune_stacked",
]
