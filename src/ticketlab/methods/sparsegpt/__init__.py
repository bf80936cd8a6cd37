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

import torch
from torch import nn

from ...errors import TicketlabError
from ...select import NMPattern, select_tensors
from ...targets import is_conv1d
from .hessian import hessian_factor, inverse_hessian_factor, lower_triangular_inverse
from .sweep import block_prune_counts, layer_runs, lowest_k_rows, nm_prune_mask, sweep


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
        runs = layer_runs(row_counts, _per_layer(sparsity, len(weights), label), cols, blocksize)
    W = _stacked_copy(weights, torch.diagonal(hessian).to(device) == 0)
    pruned = sweep(W, U, runs, pattern, blocksize)
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
