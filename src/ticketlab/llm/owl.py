"""OWL — outlier-weighted layer-wise sparsity (Yin et al., ICML 2024).

Blocks whose Wanda scores ``|W_ij| · ‖X_j‖₂`` hold more outliers matter more and are pruned less:

1. run the calibration data through the *dense* model, block by block, and for each block ``l``
   measure its outlier ratio ``D_l``: the fraction of its target layers' scores greater than
   ``M`` times the block's mean score (``M`` = `owl_threshold`, 5 by default);
2. map ``D`` linearly onto ``[S − λ, S + λ]`` (``λ`` = `owl_lambda`, 0.08): the block with the most
   outliers gets ``S − λ``, the one with the fewest ``S + λ``;
3. shift every sparsity by the same amount so that the parameter-weighted mean over the target
   layers is exactly ``S``.

The per-block sparsities then drive magnitude, Wanda or SparseGPT (`prune_model(block_sparsity=)`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import TicketlabError
from .adapters import TargetLayer, find_blocks, find_targets
from ..methods.wanda import wanda_scores
from .capture import Calibration, calibration_batch_size, capture_block_inputs, inference_mode, visiting
from .config import OneShotConfig
from .stats import StatisticsHooks


def outlier_ratio(scores: Sequence[torch.Tensor], threshold: float) -> float:
    """Fraction of all entries of ``scores`` (one block's layers) above ``threshold`` × their mean."""
    total = sum(s.numel() for s in scores)
    mean = sum(float(s.sum()) for s in scores) / max(1, total)
    above = sum(int((s > threshold * mean).sum()) for s in scores)
    return above / max(1, total)


def owl_sparsities(ratios: Mapping[int, float], sizes: Mapping[int, int], sparsity: float,
                   spread: float) -> dict[int, float]:
    """Per-block sparsity from outlier ratios (see the module docstring); ``sizes`` are the number of
    target weights per block, the weights of the mean that must equal ``sparsity``."""
    blocks = sorted(ratios)
    low, high = min(ratios.values()), max(ratios.values())
    if high - low <= 0:
        raw = {b: sparsity for b in blocks}
    else:
        raw = {b: sparsity + spread - 2 * spread * (ratios[b] - low) / (high - low) for b in blocks}
    total = sum(sizes[b] for b in blocks)
    shift = sparsity - sum(raw[b] * sizes[b] for b in blocks) / total
    out = {b: raw[b] + shift for b in blocks}
    if not all(0.0 < s < 1.0 for s in out.values()):
        raise TicketlabError(f"OWL's spread {spread} around sparsity {sparsity} leaves some block outside (0, 1); "
                             "lower --owl-lambda.")
    return out


def _block_scores(layers: list[TargetLayer], hooks: StatisticsHooks) -> list[torch.Tensor]:
    """Wanda's scores of every target layer of a block (OWL counts their outliers)."""
    scores = []
    for layer in layers:
        weight = layer.module.weight
        weight = weight.t() if layer.transposed else weight
        norms = hooks.accumulators[layer.name].statistics().norms().to(weight.device)
        scores.append(wanda_scores(weight.detach(), norms.clamp_min(0)))
    return scores


@torch.no_grad()
def owl_block_sparsity(model: nn.Module, calibration: torch.Tensor, config: OneShotConfig, *,
                       attention_mask: torch.Tensor | None = None, device: str | torch.device = "cpu",
                       batch_size: int | None = None) -> tuple[dict[int, float], dict[int, float]]:
    """(block → sparsity, block → outlier ratio) for ``config`` (unstructured sparsity only)."""
    if config.sparsity is None:
        raise TicketlabError("OWL sets layer-wise sparsities: give --sparsity, not an N:M pattern.")
    device = torch.device(device)
    path, blocks = find_blocks(model)
    by_block: dict[int, list[TargetLayer]] = {}
    for layer in find_targets(model, path, blocks, config.targets, config.exclude):
        by_block.setdefault(layer.block, []).append(layer)
    nsamples, seqlen = calibration.shape
    batch = batch_size or calibration_batch_size(model, nsamples, seqlen, device)
    ratios: dict[int, float] = {}
    sizes: dict[int, int] = {}
    with inference_mode(model):
        with visiting(model, device, exclude=blocks):
            hidden, inputs = capture_block_inputs(model, blocks[0], calibration, attention_mask, device, batch)
        state = Calibration(hidden, inputs, attention_mask.to(device).bool() if attention_mask is not None else None)
        for index in range(max(by_block) + 1):
            layers = by_block.get(index, [])
            hooks = StatisticsHooks(layers, "norms", device, len(state.batches)) if layers else None
            with visiting(blocks[index], device):
                try:
                    state.run(blocks[index], hooks, keep_outputs=True)
                finally:
                    if hooks is not None:
                        hooks.remove()
                if layers:
                    ratios[index] = outlier_ratio(_block_scores(layers, hooks), config.owl_threshold)
                    sizes[index] = sum(layer.module.weight.numel() for layer in layers)
    return owl_sparsities(ratios, sizes, float(config.sparsity), config.owl_lambda), ratios


__all__ = ["outlier_ratio", "owl_block_sparsity", "owl_sparsities"]
