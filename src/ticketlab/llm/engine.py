"""The sequential calibration engine: one driver for every model family and every one-shot method.

How a model is pruned (the order the SparseGPT and Wanda papers use, written once):

1. **Capture** the inputs of the first block (`ticketlab.llm.capture`): hidden states and every
   other argument the block received, in calibration batches.
2. For each block: move it to the device, hook its target linear layers to accumulate exactly the
   statistics the method declares (`ticketlab.llm.stats`: none, input norms or the Gram matrix;
   layers fed the same tensor share them), run every batch through the block, and prune the
   targets with the method (`ticketlab.methods.oneshot`). Each layer's relative reconstruction
   error ``‖(W−Ŵ)X‖² / ‖WX‖²`` comes from the Gram matrix when there is one, else from a token
   subsample; the report says which.
3. **Recompute** the block's outputs with the pruned weights and use them as the next block's
   inputs, so every block is calibrated on what the pruned model will actually feed it.

Only the current block, the two activation buffers (nsamples × seqlen × hidden each, sized from
the calibration tensor — never a fixed 128) and the block's statistics live on the device. The KV
cache is off (``use_cache=False``). Blocks after the last one holding a target are not run at all.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import TicketlabError
from ..groups import GroupLayout
from ..structure.layouts import group_layout
from ..progress import Progress, Silent
from ..masks import Mask
from ..memory import peak_memory
from ..methods.oneshot import LayerStatistics, one_shot_method
from .adapters import TargetLayer, context_length, find_blocks, find_targets
from .capture import Calibration, inference_mode, calibration_batch_size, capture_block_inputs, visiting
from .config import OneShotConfig
from .ranks import RankGroup
from .report import PruningReport
from .stats import StatisticsHooks, layer_error, relative_reconstruction_error
from .structured import prune_block_groups, statistics_of



class BlockLoader(Protocol):
    """Where a block's weights come from when the model is not in memory (`ticketlab.llm.stream`):
    `load` before the block is used, `release` once it is pruned and its outputs computed."""

    def load(self, index: int, block: nn.Module) -> None: ...

    def release(self, index: int, block: nn.Module) -> None: ...

    def store_mask(self, name: str, keep: torch.Tensor) -> None: ...


def prune_layer(weight: torch.Tensor, gram: torch.Tensor, config: OneShotConfig, *,
                name: str = "the layer", factors: dict[Any, Any] | None = None,
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Apply ``config.method`` to one weight (out, in) given ``gram = Σ x xᵀ`` (in, in) of its inputs.

    Returns ``(new_weight or None, keep)`` (see `ticketlab.methods.oneshot`); ``factors`` is a cache
    shared by layers with the same inputs (SparseGPT's Hessian factor).
    """
    stats = LayerStatistics(tokens=0, sq_norms=torch.diagonal(gram), gram=gram)
    return _prune_checked(weight, stats, config, name, factors if factors is not None else {})


def _prune_checked(weight: torch.Tensor, stats: LayerStatistics, config: Any, name: str,
                   cache: dict[Any, Any]) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Refuse NaN / infinite weights or statistics, naming the layer, then prune."""
    _check_finite(weight, stats, name)
    return one_shot_method(config.method).prune(weight, stats, config, name=name, cache=cache)


def _check_finite(weight: torch.Tensor, stats: LayerStatistics, name: str) -> None:
    if not bool(torch.isfinite(weight).all()):
        raise TicketlabError(f"The weights of {name} hold NaN or infinite values; the model file is damaged.")
    for statistic in (stats.gram, stats.sq_norms):
        if statistic is not None and not bool(torch.isfinite(statistic).all()):
            raise TicketlabError(f"The calibration inputs of {name} hold NaN or infinite values "
                                 "(the model's activations overflow on the calibration text).")


def _check_calibration(model: nn.Module, calibration: Any, attention_mask: Any) -> None:
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2:
        raise TicketlabError("The calibration data must be a 2-D tensor of token ids (nsamples, seqlen).")
    if calibration.dtype in (torch.bool,) or calibration.is_floating_point() or calibration.is_complex():
        raise TicketlabError(f"The calibration data must hold integer token ids, not {calibration.dtype}.")
    if calibration.shape[0] < 1 or calibration.shape[1] < 1:
        raise TicketlabError(f"The calibration tensor is empty (shape {tuple(calibration.shape)}).")
    ctx = context_length(model)
    if ctx is not None and calibration.shape[1] > ctx:
        raise TicketlabError(f"The calibration windows have {calibration.shape[1]} tokens but the model's context is {ctx}.")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    lo, hi = int(calibration.min()), int(calibration.max())
    if lo < 0 or (isinstance(vocab, int) and hi >= vocab):
        raise TicketlabError(f"The calibration token ids span [{lo}, {hi}], outside the model's vocabulary of {vocab}.")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != calibration.shape:
            raise TicketlabError("The attention mask must be a tensor with the calibration data's shape (nsamples, seqlen).")


@torch.no_grad()
def check_targets(model: nn.Module, config: OneShotConfig) -> int:
    """The number of layers ``config`` would prune in ``model``; a TicketlabError (e.g. a target
    pattern that matches nothing) before any calibration work is done."""
    blocks_path, blocks = find_blocks(model)
    targets = find_targets(model, blocks_path, blocks, config.targets, config.exclude)
    _structured_layout(model, config, targets)
    return len(targets)


def _prune_block(block: nn.Module, index: int, layers: list[TargetLayer], hooks: StatisticsHooks,
                 config: OneShotConfig, masks: Callable[[str, torch.Tensor], None], group: RankGroup
                 ) -> list[dict[str, Any]]:
    """Prune one block's target layers from its statistics; returns their report entries.

    Layers reading the same input are pruned together (`OneShotMethod.prune_group`: SparseGPT
    stacks their rows). With several ranks each prunes the groups `RankGroup.owners` gives it and
    the results are broadcast, so every rank applies the same weights and masks.
    """
    shared: dict[int, list[TargetLayer]] = {}
    for layer in layers:
        shared.setdefault(id(hooks.accumulators[layer.name]), []).append(layer)
    owners = group.owners([[layer.name for layer in members] for members in shared.values()])
    reconstructs = one_shot_method(config.method).reconstructs
    results: dict[str, tuple[torch.Tensor, dict[str, Any]]] = {}
    cache: dict[Any, Any] = {}
    for members in shared.values():
        if owners[members[0].name] == group.rank:
            results.update(_prune_group(members, hooks.accumulators[members[0].name], config, cache, index))
    block_mask: dict[str, torch.Tensor] = {}
    entries: list[dict[str, Any]] = []
    for layer in layers:
        param = layer.module.weight
        if layer.name in results:
            keep, entry = results[layer.name]
        else:
            shape = (param.shape[1], param.shape[0]) if layer.transposed else tuple(param.shape)
            keep, entry = torch.zeros(shape, dtype=torch.bool, device=param.device), {}
        if group.active:
            keep, entry = group.share(owners[layer.name], param if reconstructs else None, keep, entry)
        keep_param = (keep.t() if layer.transposed else keep).contiguous()
        block_mask[f"{layer.relative}.weight"] = keep_param
        masks(layer.parameter, keep_param)
        entries.append(entry)
    Mask(block_mask).apply_(block)      # the one mechanism that zeroes pruned weights
    for layer, entry in zip(layers, entries):
        w = layer.module.weight
        entry["sparsity"] = float((w == 0).sum()) / w.numel()
    return entries


def _prune_block_structured(block: nn.Module, index: int, layers: list[TargetLayer], hooks: StatisticsHooks,
                            config: OneShotConfig, masks: Callable[[str, torch.Tensor], None],
                            layout: GroupLayout) -> list[dict[str, Any]]:
    """Prune one block's heads, MLP channels or blocks (`ticketlab.llm.structured`): choose the
    groups, refit the readers, zero the pruned weights through the one mask mechanism."""
    for layer in layers:
        _check_finite(layer.module.weight, hooks.accumulators[layer.name].statistics(), layer.name)
    started = time.perf_counter()
    keeps, entries = prune_block_groups(layers, hooks, layout, method=config.method, sparsity=float(config.sparsity),
                                        reconstruct=config.reconstruct, percdamp=config.percdamp, index=index)
    seconds = (time.perf_counter() - started) / max(1, len(layers))
    Mask({f"{layer.relative}.weight": keeps[layer.parameter] for layer in layers}).apply_(block)
    for layer, entry in zip(layers, entries):
        masks(layer.parameter, keeps[layer.parameter])
        w = layer.module.weight
        entry["sparsity"], entry["seconds"] = float((w == 0).sum()) / w.numel(), seconds
    return entries


def _prune_group(members: list[TargetLayer], accumulator: Any, config: OneShotConfig, cache: dict[Any, Any],
                 index: int) -> dict[str, tuple[torch.Tensor, dict[str, Any]]]:
    """Prune the layers sharing ``accumulator``'s inputs in place (reconstructed weights written back);
    each one's keep mask (out, in) and report entry (the group's seconds split by row count)."""
    weights = [layer.module.weight.t() if layer.transposed else layer.module.weight for layer in members]
    stats = accumulator.statistics()
    for layer, weight in zip(members, weights):
        _check_finite(weight, stats, layer.name)
    started = time.perf_counter()
    pruned = one_shot_method(config.method).prune_group(weights, stats, config, names=[l.name for l in members],
                                                        cache=cache)
    seconds = time.perf_counter() - started
    rows = sum(weight.shape[0] for weight in weights)
    out = {}
    for layer, weight, (new_w, keep) in zip(members, weights, pruned):
        param = layer.module.weight
        error, source = layer_error(weight, new_w, keep, accumulator)
        if new_w is not None:
            weight.copy_(new_w.to(param.dtype))
        out[layer.name] = (keep, {
            "name": layer.name, "parameter": layer.parameter, "block": index, "shape": list(param.shape),
            "sparsity": 0.0, "target_sparsity": config.target_sparsity, "reconstruction_error": error,
            "reconstruction_error_source": source, "seconds": seconds * weight.shape[0] / rows,
            "calibration_tokens": accumulator.tokens,
        })
    return out


@dataclasses.dataclass
class _BlockContext:
    """What every block of one `prune_model` call is processed with, and the calibration state
    that carries the (pruned) outputs of one block to the next."""

    config: OneShotConfig
    method: Any
    group: RankGroup
    device: torch.device
    store_mask: Callable[[str, torch.Tensor], None]
    block_sparsity: Mapping[int, float] | None
    loader: "BlockLoader | None"
    last: int
    layout: GroupLayout | None = None        # the groups of a coarse granularity (None: single weights, N:M)
    calibration: Calibration | None = None   # set once the first block's inputs are captured

    def process(self, index: int, block: nn.Module, layers: list[TargetLayer]) -> list[dict[str, Any]]:
        """Load block ``index`` onto the device, prune its ``layers`` from their statistics, run it
        once more so its pruned outputs feed the next block, and put it back; the layers' report."""
        if self.loader is not None:
            self.loader.load(index, block)
        with visiting(block, self.device):
            report = self._prune(index, block, layers) if layers else []
            if index < self.last:   # pruned outputs become the next block's inputs
                self.calibration.run(block, keep_outputs=True)
        if self.loader is not None:
            self.loader.release(index, block)
        return report

    def _prune(self, index: int, block: nn.Module, layers: list[TargetLayer]) -> list[dict[str, Any]]:
        config = self.config
        kinds = (statistics_of(layers, self.layout, config.method, config.reconstruct) if self.layout is not None
                 else self.method.statistics)
        hooks = StatisticsHooks(layers, kinds, self.device, len(self.calibration.batches))
        try:
            self.calibration.run(block, hooks)
        finally:
            hooks.remove()
        self.group.reduce_statistics(list({id(a): a for a in hooks.accumulators.values()}.values()))
        if self.block_sparsity is not None and index in self.block_sparsity:
            config = dataclasses.replace(config, sparsity=float(self.block_sparsity[index]))
        if self.layout is not None:
            return _prune_block_structured(block, index, layers, hooks, config, self.store_mask, self.layout)
        return _prune_block(block, index, layers, hooks, config, self.store_mask, self.group)


def _prune_blocks(model: nn.Module, blocks: Any, by_block: Mapping[int, list[TargetLayer]], local: torch.Tensor,
                  local_mask: torch.Tensor | None, batch: int, handle: Any, report: list[dict[str, Any]],
                  context: _BlockContext) -> None:
    """Capture the first block's inputs, then process every block in turn (`_BlockContext`),
    appending to ``report``."""
    with visiting(model, context.device, exclude=blocks):
        hidden, inputs = capture_block_inputs(model, blocks[0], local, local_mask, context.device, batch)
    token_masks = local_mask.to(device=context.device).bool() if local_mask is not None else None
    context.calibration = Calibration(hidden, inputs, token_masks)
    for index in range(context.last + 1):
        report += context.process(index, blocks[index], by_block.get(index, []))
        handle.update(1)


def _structured_layout(model: nn.Module, config: OneShotConfig, targets: list[TargetLayer]) -> GroupLayout | None:
    """The groups of a coarse ``--granularity`` over the target weights (None: single weights, N:M);
    one sentence, before any calibration, for a model whose heads or channels are unknown."""
    if not config.structured:
        return None
    return group_layout(model, config.granularity, [layer.parameter for layer in targets])


@torch.no_grad()
def prune_model(model: nn.Module, calibration: torch.Tensor, config: OneShotConfig, *,
                attention_mask: torch.Tensor | None = None, device: str | torch.device = "cpu",
                progress: Progress | None = None, batch_size: int | None = None,
                block_sparsity: Mapping[int, float] | None = None,
                loader: BlockLoader | None = None) -> PruningReport:
    """Prune ``model``'s linear layers inside its transformer blocks, in place, block by block.

    Args:
        model: a Hugging Face ``PreTrainedModel`` (decoder LM or encoder; any head).
        calibration: int64 token ids (nsamples, seqlen); ``seqlen`` must fit the model's context.
        config: what to do (`OneShotConfig`).
        attention_mask: optional (nsamples, seqlen) 0/1 mask, passed to the model and used to leave
            padding tokens out of the statistics.
        device: where each block is processed; parameters outside the blocks move there for the
            capture and come back afterwards, and each block goes back to its own device.
        progress: optional ``progress(description, total)`` returning a tqdm-like handle.
        batch_size: calibration samples per block call (default: `calibration_batch_size`).
        block_sparsity: per-block sparsity overriding ``config.sparsity`` (OWL); unstructured only.
        loader: materialises each block's weights before it is used and releases them after
            (streaming from shards; `ticketlab.llm.stream`). Without one the model is in memory.

    Returns a `PruningReport`; the pruned weights are exactly zero, the embedding and output head
    untouched.
    """
    start = time.perf_counter()
    if not isinstance(config, OneShotConfig):
        raise TicketlabError("prune_model needs a OneShotConfig.")
    _check_calibration(model, calibration, attention_mask)
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    blocks_path, blocks = find_blocks(model)
    by_block: dict[int, list[TargetLayer]] = {}
    for layer in find_targets(model, blocks_path, blocks, config.targets, config.exclude):
        by_block.setdefault(layer.block, []).append(layer)
    nsamples, seqlen = calibration.shape
    group = RankGroup.from_env(device)
    mine = group.samples(nsamples)
    local = calibration[mine]
    local_mask = attention_mask[mine] if attention_mask is not None else None
    batch = batch_size or calibration_batch_size(model, local.shape[0], seqlen, device)
    method = one_shot_method(config.method)
    layout = _structured_layout(model, config, [layer for members in by_block.values() for layer in members])
    last = max(by_block)
    handle = progress(f"{config.describe()}: pruning {last + 1} blocks", last + 1) if progress else Silent()
    layers_report: list[dict[str, Any]] = []
    masks: dict[str, torch.Tensor] = {}
    # in memory, each mask goes to the CPU at once: the device holds one block, not every mask
    store_mask = loader.store_mask if loader is not None else (lambda name, keep: masks.__setitem__(name, keep.cpu()))
    try:
        with inference_mode(model):
            _prune_blocks(model, blocks, by_block, local, local_mask, batch, handle, layers_report,
                          _BlockContext(config, method, group, device, store_mask, block_sparsity, loader, last,
                                        layout))
    finally:
        handle.close()
    peak, source = peak_memory(device)
    return PruningReport(
        method=config.method, sparsity=config.target_sparsity, pattern=config.pattern,
        layers=layers_report, wall_time=time.perf_counter() - start, peak_memory_bytes=peak,
        masks=loader.masks if loader is not None else Mask(masks), peak_memory_source=source, nsamples=int(nsamples), seqlen=int(seqlen),
        blocks=blocks_path, device=str(device), model_type=getattr(getattr(model, "config", None), "model_type", None),
        extra={"calibration_batch_size": batch, "statistics": method.statistics, "processes": group.world},
    )


__all__ = ["check_targets", "prune_layer", "prune_model", "relative_reconstruction_error"]
