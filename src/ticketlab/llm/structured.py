"""Structured one-shot pruning of one transformer block: attention heads, MLP channels, or blocks.

The engine (`ticketlab.llm.engine`) calls `prune_block_groups` in place of the per-layer methods
when ``--granularity`` is coarse. The groups come from the family tables
(`ticketlab.structure.transformers`: a head is its q/k/v rows and o columns, under grouped-query
attention a key/value head with its query heads; an MLP channel is its gate/up (or fc1) rows and
its down (or fc2) column); blocks are ``R x C`` tiles of each target weight as stored.

* **Score** (per group, from the statistics the block was calibrated with): ``magnitude`` — the
  L2 norm of the group's weights; ``wanda`` — the sum of Wanda's per-weight scores
  ``|W_ij| · ‖X_j‖₂`` over the group's weights (rows of the writers with the norms of the block's
  input, columns of the reader with the norms of the channel itself): an activation-weighted group
  norm, as in the structured variants of Wanda and FLAP (An et al., AAAI 2024).
* **Selection**: every family of the block keeps ``round_half_up((1 − s) · groups)`` groups (at
  least one head and one channel), ``s`` the block's sparsity (uniform, or OWL's per-block value).
  Each group holds the same number of weights, so ``s`` is also the fraction of the family's
  weights removed: one ``--sparsity`` means the same at every granularity.
* **Reconstruction** (``reconstruct="lsq"``, the default for heads and channels): the layer that
  reads the removed groups (o_proj, down_proj) is refit by least squares on the calibration
  inputs, so the block's output changes as little as the kept columns allow — the layer-wise
  reconstruction of Kwon et al. (NeurIPS 2022) solved exactly: with ``G = Σ x xᵀ`` of its inputs
  and ``K`` the kept columns, ``W_K ← W G[:, K] (G[K, K] + λI)⁻¹`` (``λ`` = ``percdamp`` × the mean
  of ``diag G[K, K]``), removed columns zero. ``"none"`` keeps the surviving weights as they were.

Every rank of a torchrun job holds the same (all-reduced) statistics and computes the same
selection, so no result needs broadcasting.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import TicketlabError
from ..groups import GroupLayout, SliceFamily
from ..select import GroupTarget, select_groups
from .adapters import TargetLayer
from .stats import StatisticsHooks, layer_error

RECONSTRUCTIONS: tuple[str, ...] = ("lsq", "none")


def group_scores(layers: list[TargetLayer], hooks: StatisticsHooks, method: str) -> dict[str, torch.Tensor]:
    """Per-weight scores of the block's target weights, in their stored orientation (GPT-2's
    Conv1D weights are (in, out)): ``|W|`` for magnitude, ``|W_ij| · ‖X_j‖₂`` for Wanda."""
    out = {}
    for layer in layers:
        weight = layer.module.weight.detach().to(torch.float32).abs()
        if method == "wanda":
            norms = hooks.accumulators[layer.name].statistics().norms().to(weight.device).clamp_min(0).sqrt()
            weight = weight * (norms.view(-1, 1) if layer.transposed else norms.view(1, -1))
        out[layer.parameter] = weight
    return out


def statistics_of(layers: list[TargetLayer], layout: GroupLayout, method: str, reconstruct: str) -> dict[str, str]:
    """The statistic each layer's hooks collect: the Gram matrix for a layer whose input columns a
    group owns (a reader, refit by least squares), the method's own (norms for Wanda, nothing
    for magnitude) for the rest."""
    own = "norms" if method == "wanda" else "none"
    readers = {m.param for f in layout if isinstance(f, SliceFamily) for m in f.members
               if m.dim == (0 if _transposed(layers, m.param) else 1)}
    return {layer.name: "gram" if reconstruct == "lsq" and layer.parameter in readers else own for layer in layers}


def _transposed(layers: list[TargetLayer], param: str) -> bool:
    return any(layer.transposed for layer in layers if layer.parameter == param)


def kept_groups(layout: GroupLayout, sparsity: float) -> dict[str, int]:
    """Groups each family keeps at ``sparsity``: ``round_half_up((1 − s) · groups)``, at least the
    family's minimum."""
    return {f.name: max(f.minimum, min(f.size, math.floor((1.0 - sparsity) * f.size + 0.5))) for f in layout}


def prune_block_groups(layers: list[TargetLayer], hooks: StatisticsHooks, layout: GroupLayout, *, method: str,
                       sparsity: float, reconstruct: str, percdamp: float, index: int
                       ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Choose the block's groups and refit its readers; returns (parameter -> keep mask in stored
    orientation, report entries). The refit weights are written into the layers; the caller
    zeroes the pruned ones through the one mask mechanism."""
    block = layout.restricted_to([layer.parameter for layer in layers])
    if not len(block):
        raise TicketlabError(f"Block {index} has no group that can be pruned ({'; '.join(layout.frozen.values())}).")
    scores = group_scores(layers, hooks, method)
    mask = select_groups(scores, block, GroupTarget(per_family=kept_groups(block, sparsity)),
                         aggregate="l2" if method == "magnitude" else "sum")
    keeps = {layer.parameter: mask[layer.parameter].to(layer.module.weight.device) for layer in layers
             if layer.parameter in mask}
    entries = []
    for layer in layers:
        keep = keeps.get(layer.parameter)
        if keep is None:   # a target weight no family holds (frozen): left dense
            keep = torch.ones_like(layer.module.weight, dtype=torch.bool)
            keeps[layer.parameter] = keep
        entries.append(_refit_and_report(layer, keep, hooks, reconstruct, percdamp, index, sparsity))
    return keeps, entries


def _refit_and_report(layer: TargetLayer, keep: torch.Tensor, hooks: StatisticsHooks, reconstruct: str,
                      percdamp: float, index: int, sparsity: float) -> dict[str, Any]:
    """Refit ``layer`` if it only lost columns (a reader) and there is a Gram matrix; its entry."""
    accumulator = hooks.accumulators[layer.name]
    weight = layer.module.weight.t() if layer.transposed else layer.module.weight     # (out, in)
    logical = keep.t() if layer.transposed else keep
    columns = logical.any(dim=0)
    reader = bool(logical.any(dim=1).all()) and not bool(columns.all())
    new = None
    if reconstruct == "lsq" and reader and accumulator.gram is not None:
        new = least_squares_refit(weight, accumulator.gram, columns, percdamp, name=layer.name)
    error, source = layer_error(weight, new, logical, accumulator)
    if new is not None:
        weight.copy_(new.to(weight.dtype))
    return {"name": layer.name, "parameter": layer.parameter, "block": index, "shape": list(layer.module.weight.shape),
            "sparsity": 0.0, "target_sparsity": sparsity, "reconstruction_error": error,
            "reconstruction_error_source": source, "refit": new is not None, "seconds": 0.0,
            "calibration_tokens": accumulator.tokens}


@torch.no_grad()
def least_squares_refit(weight: torch.Tensor, gram: torch.Tensor, columns: torch.Tensor, percdamp: float, *,
                        name: str = "the layer") -> torch.Tensor:
    """``W (out, in)`` refit on its kept input ``columns`` (in,) bool: the ``Ŵ`` with ``Ŵ[:, ~K] = 0``
    that minimises ``‖W X − Ŵ X‖²`` given ``G = X Xᵀ`` (in, in), damped by ``percdamp`` of the
    mean kept diagonal (fp64 Cholesky; a factorisation that still fails is one sentence)."""
    kept = columns.nonzero().flatten().to(gram.device)
    g = gram.to(torch.float64)
    a = g.index_select(0, kept).index_select(1, kept)
    damp = percdamp * float(torch.diagonal(a).mean()) if a.numel() else 0.0
    a += torch.eye(a.shape[0], dtype=a.dtype, device=a.device) * max(damp, 1e-12)
    b = weight.to(device=g.device, dtype=torch.float64) @ g.index_select(1, kept)      # (out, |K|)
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise TicketlabError(f"The least-squares refit of {name} failed (its calibration inputs are degenerate); "
                             "use --reconstruct none or a higher --percdamp.")
    solved = torch.cholesky_solve(b.t(), factor).t()                                    # b a⁻¹
    out = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    out[:, kept.to(weight.device)] = solved.to(device=weight.device, dtype=torch.float32)
    return out


__all__ = ["RECONSTRUCTIONS", "group_scores", "kept_groups", "least_squares_refit", "prune_block_groups",
           "statistics_of"]
