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
  ``k_b`` lowest scores of the block are chosen by the shared `ticketlab.select.select` routine.
* **Speed** (same arithmetic, regrouped; measured by ``benchmarks/llm_layer_pruning.py``):
  ``U`` comes from one Cholesky factorisation of the order-reversed ``H`` and one triangular
  inverse (by recursive halving, i.e. matrix products) instead of Cholesky -> cholesky_inverse ->
  Cholesky; the per-column updates inside a 128-column block are themselves applied lazily in
  sub-blocks of 16 columns (the same rank-1 updates, grouped into small matrix products); the
  weights are kept transposed (cols, rows) so that a column is one contiguous row; and the k
  lowest scores of a block are found with ``kthvalue`` instead of a full sort (`lowest_k`, equal
  to the shared selection routine, ties included). The mask semantics (per 128-block, from the
  weights updated so far) are unchanged, so the result equals the reference algorithm's up to
  floating-point rounding — which can flip the odd near-tied mask decision on ill-conditioned
  Hessians, as any reordering of the arithmetic does.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TicketlabError
from ..select import NMPattern, select
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
    among ties), which finds its threshold with ``kthvalue`` rather than a full sort.
    """
    n = scores.numel()
    keep = select({"block": scores}, n - max(0, min(k, n)), scope="layer")["block"]
    return ~keep.to(scores.device)


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
    """Prune one layer with SparseGPT.

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
    if (sparsity is None) == (pattern is None):
        raise TicketlabError("SparseGPT needs exactly one of a sparsity or an N:M pattern.")
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise TicketlabError(f"The Hessian of {name} has shape {tuple(hessian.shape)}, expected {(cols, cols)}.")
    if pattern is not None and (cols % pattern.m or blocksize % pattern.m):
        raise TicketlabError(
            f"{name} has {cols} inputs and block size {blocksize}; both must be multiples of M={pattern.m} for {pattern.n}:{pattern.m}."
        )
    device = weight.device
    dead_idx = (torch.diagonal(hessian) == 0).nonzero().squeeze(1).to(device)
    U = factor if factor is not None else hessian_factor(hessian.to(device), percdamp, name=name)
    if U.shape != (cols, cols):
        raise TicketlabError(f"The precomputed factor for {name} has shape {tuple(U.shape)}, expected {(cols, cols)}.")

    # Transposed working copy: Wt[j] is input column j of W, contiguous.
    # (always a fresh copy: for a transposed GPT-2 Conv1D weight, .t().contiguous() would alias it)
    Wt = torch.empty(cols, rows, dtype=torch.float32, device=device)
    Wt.copy_(weight.detach().t())
    Wt[dead_idx] = 0.0
    prune_t = torch.zeros(cols, rows, dtype=torch.bool, device=device)  # True = pruned
    counts = block_prune_counts(rows, cols, sparsity, blocksize) if sparsity is not None else None
    leaf = _LEAF_COLUMNS if pattern is None else pattern.m * max(1, -(-_LEAF_COLUMNS // pattern.m))

    for bi, i1 in enumerate(range(0, cols, blocksize)):
        i2 = min(i1 + blocksize, cols)
        B = Wt[i1:i2]                  # (b, rows) view: this block's columns
        Ub = U[i1:i2, i1:i2]           # (b, b) upper triangular
        d = torch.diagonal(Ub)         # (b,)
        P = prune_t[i1:i2]             # (b, rows) view
        if counts is not None:
            scores = B.square() / d.square().unsqueeze(1)
            k = counts[bi]
            P.copy_(lowest_k(scores, k))
        scale = P.to(torch.float32) / d.unsqueeze(1)   # err = w * pruned / U_jj (updated for N:M below)
        E = torch.empty_like(B)        # (b, rows) accumulated errors of this block
        b = i2 - i1
        for l1 in range(0, b, leaf):
            l2 = min(l1 + leaf, b)
            for j in range(l1, l2):
                if pattern is not None and j % pattern.m == 0:
                    g = slice(j, j + pattern.m)
                    group_scores = (B[g].square() / d[g].square().unsqueeze(1)).t()   # (rows, m)
                    keep_g = select({"group": group_scores}, pattern=pattern)["group"].to(device)
                    P[g] = ~keep_g.t()
                    scale[g] = P[g].to(torch.float32) / d[g].unsqueeze(1)
                e = B[j] * scale[j]                                   # (rows,)
                E[j] = e
                if j + 1 < l2:
                    B[j + 1:l2].addr_(Ub[j, j + 1:l2], e, alpha=-1.0)
            if l2 < b:  # lazy update of the rest of this block from the sub-block's errors
                B[l2:].addmm_(Ub[l1:l2, l2:].t(), E[l1:l2], alpha=-1.0)
        B.masked_fill_(P, 0.0)
        if i2 < cols:  # lazy batch update of all later columns
            Wt[i2:].addmm_(U[i1:i2, i2:].t(), E, alpha=-1.0)

    return Wt.t().contiguous(), ~prune_t.t()


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


__all__ = ["SparseGPT", "block_prune_counts", "hessian_factor", "inverse_hessian_factor", "lower_triangular_inverse", "lowest_k", "sparsegpt_prune"]
