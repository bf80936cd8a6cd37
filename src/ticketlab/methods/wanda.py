"""Wanda (Sun et al. 2023): prune by weight magnitude times input activation norm.

For a linear layer ``y = W x`` with ``W`` (rows, cols), the score of weight ``W_ij`` is
``|W_ij| · ‖X_j‖₂``, where ``‖X_j‖₂`` is the L2 norm of input feature ``j`` over every calibration
token. The comparison group is each output row: every row loses the same number of weights
(``round(sparsity · cols)``), which the paper found essential for LLMs — a per-layer ranking lets
rows with large activations starve others. An N:M pattern keeps the N best of every M consecutive
inputs of a row. No weight is updated: Wanda only chooses a mask.

N:M selection goes through the shared `ticketlab.select.select`; per-row selection through
`lowest_k_per_row`, the complement of the shared ``select(scope="row")``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TicketlabError
from ..masks import Mask
from ..select import NMPattern, select, select_tensors
from ..targets import is_conv1d


def wanda_scores(weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
    """``|W_ij| · sqrt(Σ_t x_tj²)``.

    Args:
        weight: (rows, cols), ``nn.Linear`` orientation.
        input_sq_norms: (cols,) — the sum over calibration tokens of each input feature squared
            (i.e. the diagonal of ``Σ x xᵀ``); any common positive scale gives the same mask.
    Returns (rows, cols) float32 scores; higher = more worth keeping.
    """
    if input_sq_norms.shape != (weight.shape[1],):
        raise TicketlabError(
            f"Wanda needs one activation norm per input feature ({weight.shape[1]}), got shape {tuple(input_sq_norms.shape)}."
        )
    norms = input_sq_norms.to(device=weight.device, dtype=torch.float32).clamp_min(0).sqrt()
    return weight.detach().to(torch.float32).abs() * norms.unsqueeze(0)


def row_keep_count(rows: int, cols: int, sparsity: float) -> int:
    """Weights kept by a per-row selection: each row prunes ``round_half_up(sparsity · cols)``."""
    pruned_per_row = int(sparsity * cols + 0.5)
    return rows * (cols - pruned_per_row)


def lowest_k_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (rows, cols), on the scores' device, marking the ``k`` lowest scores of every row.

    The complement of the shared `select`'s row-scope keep set (same tie rule), which finds each
    row's threshold with ``kthvalue`` rather than sorting every row. On a GPU nothing waits for
    the device: NaN scores are refused (TicketlabError) only on the CPU, where the check is free;
    on a GPU the caller vouches for finite scores (the engine checks weights and statistics first).
    """
    if scores.dim() != 2:
        raise TicketlabError(f"Row-wise selection needs a 2-D score tensor, got shape {tuple(scores.shape)}.")
    rows, cols = scores.shape
    k = max(0, min(k, cols))
    keep = select_tensors({"layer": scores}, rows * (cols - k), scope="row", check=scores.device.type == "cpu")["layer"]
    return ~keep


def wanda_mask(weight: torch.Tensor, input_sq_norms: torch.Tensor, *, sparsity: float | None = None,
               pattern: NMPattern | None = None) -> torch.Tensor:
    """Keep mask (bool, rows x cols): per-row lowest scores pruned, or N:M along the inputs."""
    if (sparsity is None) == (pattern is None):
        raise TicketlabError("Wanda needs exactly one of a sparsity or an N:M pattern.")
    scores = {"layer": wanda_scores(weight, input_sq_norms)}
    if pattern is not None:
        return select(scores, pattern=pattern)["layer"]
    rows, cols = weight.shape
    pruned_per_row = cols - row_keep_count(rows, cols, sparsity) // rows
    return ~lowest_k_per_row(scores["layer"], pruned_per_row)


class Wanda:
    """Stand-alone object with the same shape as `SparseGPT`: ``add_batch``, ``prune``, ``free``."""

    def __init__(self, layer: nn.Module):
        self.layer = layer
        self.transposed = is_conv1d(layer)
        weight = layer.weight
        cols = weight.shape[0] if self.transposed else weight.shape[1]
        self.sq_norms: torch.Tensor | None = torch.zeros(cols, dtype=torch.float32, device=weight.device)
        self.nsamples = 0

    @torch.no_grad()
    def add_batch(self, inp: torch.Tensor) -> None:
        """Accumulate ``Σ x_j²`` over the tokens of ``inp`` (..., in_features)."""
        if self.sq_norms is None:
            raise TicketlabError("This Wanda object has been freed.")
        x = inp.detach().reshape(-1, inp.shape[-1]).to(device=self.sq_norms.device, dtype=torch.float32)
        self.sq_norms.add_(x.square().sum(dim=0))
        self.nsamples += x.shape[0]

    @torch.no_grad()
    def prune(self, sparsity: float | None = None, pattern: NMPattern | str | None = None) -> torch.Tensor:
        """Zero the pruned weights in place; returns the keep mask in the parameter's orientation."""
        if self.sq_norms is None:
            raise TicketlabError("This Wanda object has been freed.")
        if isinstance(pattern, str):
            pattern = NMPattern.parse(pattern)
        param = self.layer.weight
        W = param.t() if self.transposed else param
        keep = wanda_mask(W, self.sq_norms, sparsity=sparsity, pattern=pattern).to(param.device)
        if self.transposed:
            keep = keep.t().contiguous()
        Mask({"weight": keep}).apply_(self.layer)  # the one mechanism that writes a mask into weights
        return keep

    def free(self) -> None:
        self.sq_norms = None


__all__ = ["Wanda", "lowest_k_per_row", "row_keep_count", "wanda_mask", "wanda_scores"]
