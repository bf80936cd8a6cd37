"""The sequential calibration engine: one driver for every model family and every one-shot method.

How a model is pruned (the order the SparseGPT and Wanda papers use, written once):

1. **Capture** the inputs of the first block. The model runs on each calibration sample with a
   forward pre-hook (``with_kwargs=True``) on block 0 that records the hidden states *and every
   other positional and keyword argument the block received* — attention masks, rotary
   ``position_embeddings``, ``position_ids``, ``cache_position`` ... — then raises a private
   exception to stop the pass. Replaying those arguments is what keeps the blocks' outputs exact;
   dropping them (a common bug) silently changes the attention. Arguments equal across samples
   are stored once.
2. For each block: move it to the device, hook its target linear layers so that each sample's
   inputs ``x`` (tokens, in) are accumulated into ``G = Σ x xᵀ`` (fp32; layers fed the same tensor,
   e.g. q/k/v, share one ``G``), run every sample through the block, and prune the targets:
   magnitude uses nothing, Wanda the diagonal of ``G`` (``‖X_j‖²``), SparseGPT the whole of it.
   Each layer's relative reconstruction error ``‖(W−Ŵ)X‖² / ‖WX‖² = tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)``
   comes from the same ``G``, exactly and without another pass.
3. **Recompute** the block's outputs with the pruned weights and use them as the next block's
   inputs, so every block is calibrated on what the pruned model will actually feed it.

Only the current block, the two activation buffers (nsamples × seqlen × hidden each, sized from
the calibration tensor — never a fixed 128) and the block's statistics live on the device. The KV
cache is off (``use_cache=False``). Blocks returning a tensor or a tuple (older transformers) are
both handled. Blocks after the last one holding a target are not run at all.
"""

from __future__ import annotations

import inspect
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError
from ..masks import Mask
from ..methods.sparsegpt import hessian_factor, lowest_k, sparsegpt_prune
from ..methods.wanda import lowest_k_per_row, row_keep_count, wanda_mask
from ..select import select
from .adapters import TargetLayer, context_length, find_blocks, find_targets
from .config import OneShotConfig
from .report import PruningReport

#: progress(description, total) -> handle with update(n) and close() (tqdm-like); None = silent.
Progress = Callable[[str, int], Any]


class _StopForward(Exception):
    """Raised by the capture hook on block 0 to end the model's forward pass early."""


# ------------------------------------------------------------------------------------------------
# capture of the first block's inputs
# ------------------------------------------------------------------------------------------------
@dataclass
class _BlockInputs:
    """Per-sample arguments of a block, besides the hidden states (which live in the buffers)."""

    args: list[tuple[Any, ...]] = field(default_factory=list)      # positional args after hidden
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    hidden_as_kwarg: bool = False

    def call(self, block: nn.Module, sample: int, hidden: torch.Tensor) -> torch.Tensor:
        """Run ``block`` on ``hidden`` (1, seqlen, hidden) with the sample's recorded arguments."""
        kwargs = dict(self.kwargs[sample])
        if self.hidden_as_kwarg:
            out = block(*self.args[sample], hidden_states=hidden, **kwargs)
        else:
            out = block(hidden, *self.args[sample], **kwargs)
        if isinstance(out, (tuple, list)):  # transformers < 4.5x returned (hidden, attn, cache)
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise TicketlabError(f"A {type(block).__name__} block returned {type(out).__name__}, not hidden states.")
        return out


def _is_cache(value: Any) -> bool:
    return any(cls.__name__.endswith("Cache") for cls in type(value).__mro__)


def _shared(value: Any, reference: Any) -> Any:
    """``reference`` when ``value`` equals it (so identical masks / rotary tables are stored once)."""
    if isinstance(value, torch.Tensor) and isinstance(reference, torch.Tensor):
        if (value.shape == reference.shape and value.dtype == reference.dtype
                and value.device == reference.device and torch.equal(value, reference)):
            return reference
        return value
    if isinstance(value, (tuple, list)) and isinstance(reference, (tuple, list)) and len(value) == len(reference):
        items = [_shared(v, r) for v, r in zip(value, reference)]
        return type(value)(items) if isinstance(value, tuple) else items
    return value


def _sanitize(value: Any) -> Any:
    """Drop KV caches (replaying one would make every sample attend to the previous ones)."""
    if _is_cache(value):
        return None
    if isinstance(value, tuple):
        return tuple(_sanitize(v) for v in value)
    return value


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params


@torch.no_grad()
def _capture(model: nn.Module, block0: nn.Module, calibration: torch.Tensor,
             attention_mask: torch.Tensor | None, device: torch.device) -> tuple[torch.Tensor, _BlockInputs]:
    """Hidden states entering block 0, (nsamples, seqlen, hidden) on ``device``, and the other arguments."""
    nsamples = calibration.shape[0]
    seen: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        if args:
            seen["hidden"], seen["args"], seen["as_kwarg"] = args[0], tuple(args[1:]), False
        elif "hidden_states" in kwargs:
            seen["hidden"], seen["args"], seen["as_kwarg"] = kwargs.pop("hidden_states"), (), True
        else:
            raise TicketlabError("The first block was called without hidden states, so its inputs cannot be captured.")
        seen["kwargs"] = kwargs
        raise _StopForward

    inputs = _BlockInputs()
    buffer: torch.Tensor | None = None
    use_cache = _accepts(model, "use_cache")
    handle = block0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for s in range(nsamples):
            call: dict[str, Any] = {"input_ids": calibration[s:s + 1].to(device)}
            if attention_mask is not None:
                call["attention_mask"] = attention_mask[s:s + 1].to(device)
            if use_cache:
                call["use_cache"] = False
            seen.clear()
            try:
                model(**call)
            except _StopForward:
                pass
            if "hidden" not in seen:
                raise TicketlabError("The model's forward pass never reached its first transformer block.")
            hidden = seen["hidden"]
            if hidden.dim() < 2 or hidden.shape[0] != 1:
                raise TicketlabError(f"The first block received hidden states of shape {tuple(hidden.shape)}, expected (1, seqlen, hidden).")
            if buffer is None:
                buffer = torch.empty((nsamples, *hidden.shape[1:]), dtype=hidden.dtype, device=device)
            buffer[s] = hidden[0].to(device)
            args = _sanitize(seen["args"])
            kwargs = {k: _sanitize(v) for k, v in seen["kwargs"].items()}
            if s > 0:
                args = _shared(args, inputs.args[0])
                kwargs = {k: _shared(v, inputs.kwargs[0].get(k)) for k, v in kwargs.items()}
            inputs.args.append(args)
            inputs.kwargs.append(kwargs)
            inputs.hidden_as_kwarg = seen["as_kwarg"]
    finally:
        handle.remove()
    assert buffer is not None
    return buffer, inputs


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
class _Gram:
    """``G = Σ x xᵀ`` (in, in) in fp32 over calibration tokens, and the token count."""

    def __init__(self, features: int, device: torch.device):
        self.matrix = torch.zeros(features, features, dtype=torch.float32, device=device)
        self.tokens = 0
        self.last_input: torch.Tensor | None = None

    def add(self, x: torch.Tensor, token_mask: torch.Tensor | None) -> None:
        x = x.reshape(-1, x.shape[-1])
        if token_mask is not None and x.shape[0] == token_mask.numel():
            x = x[token_mask]       # padding positions are not calibration data
        x = x.to(torch.float32)
        self.matrix.addmm_(x.t(), x)
        self.tokens += x.shape[0]


class _StatsHooks:
    """Forward hooks on one block's target layers; layers fed the very same tensor share one `_Gram`."""

    def __init__(self, layers: list[TargetLayer], device: torch.device):
        self.device = device
        self.grams: dict[str, _Gram] = {}
        self.owners: set[str] = set()
        self.token_mask: torch.Tensor | None = None
        self._first: dict[int, tuple[torch.Tensor, _Gram]] = {}
        self._handles = [layer.module.register_forward_hook(self._hook(layer)) for layer in layers]

    def _hook(self, layer: TargetLayer) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0]
            gram = self.grams.get(layer.name)
            if gram is None:  # first sample: decide ownership
                key = id(x)
                if key in self._first and self._first[key][0] is x:
                    gram = self._first[key][1]
                else:
                    gram = _Gram(layer.in_features, self.device)
                    self._first[key] = (x, gram)
                    self.owners.add(layer.name)
                self.grams[layer.name] = gram
            if layer.name in self.owners:
                gram.add(x, self.token_mask)
                gram.last_input = x
            elif gram.last_input is not x:
                raise RuntimeError(f"{layer.name} no longer shares its input with the layer it shared it with.")
        return hook

    def end_sample(self) -> None:
        self._first.clear()   # ownership is settled by the first sample; drop its tensors
        for gram in self.grams.values():
            gram.last_input = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._first.clear()


# ------------------------------------------------------------------------------------------------
# one layer
# ------------------------------------------------------------------------------------------------
def prune_layer(weight: torch.Tensor, gram: torch.Tensor, config: OneShotConfig, *,
                name: str = "the layer", factors: dict[int, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Apply ``config.method`` to one weight in ``nn.Linear`` orientation (out, in).

    ``gram`` is ``Σ x xᵀ`` (in, in) over the layer's calibration inputs. Returns ``(new_weight,
    keep)``: ``new_weight`` is None for methods that only mask (magnitude, Wanda), the updated fp32
    weight for SparseGPT; ``keep`` is a bool (out, in) mask on the weight's device.
    """
    if not bool(torch.isfinite(weight).all()):
        raise TicketlabError(f"The weights of {name} hold NaN or infinite values; the model file is damaged.")
    if config.method != "magnitude" and not bool(torch.isfinite(gram).all()):
        raise TicketlabError(f"The calibration inputs of {name} hold NaN or infinite values "
                             "(the model's activations overflow on the calibration text).")
    pattern = config.nm_pattern
    sparsity = None if pattern is not None else config.sparsity
    rows, cols = weight.shape
    if config.method == "sparsegpt":
        factor = None
        if factors is not None:
            if id(gram) not in factors:
                factors[id(gram)] = hessian_factor(gram.to(weight.device), config.percdamp, name=name)
            factor = factors[id(gram)]
        new_w, keep = sparsegpt_prune(weight, gram, sparsity=sparsity, pattern=pattern, factor=factor,
                                      blocksize=config.blocksize, percdamp=config.percdamp, name=name)
        return new_w, keep
    if config.method == "wanda":
        return None, wanda_mask(weight, torch.diagonal(gram), sparsity=sparsity, pattern=pattern).to(weight.device)
    scores = weight.detach().to(torch.float32).abs()
    if pattern is not None:
        keep = select({"w": scores}, pattern=pattern)["w"]
    elif config.magnitude_scope == "row":
        keep = ~lowest_k_per_row(scores, cols - row_keep_count(rows, cols, sparsity) // rows)
    else:
        keep = ~lowest_k(scores, int(sparsity * rows * cols + 0.5))
    return None, keep.to(weight.device)


@torch.no_grad()
def relative_reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, gram: torch.Tensor) -> float:
    """``‖(W − Ŵ)X‖² / ‖WX‖²`` from ``G = X Xᵀ``: ``tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)`` (weights (out, in))."""
    W = weight.detach().to(torch.float32)
    D = W - pruned.detach().to(torch.float32)
    num = float(((D @ gram) * D).sum())
    den = float(((W @ gram) * W).sum())
    if den <= 0.0:
        return 0.0 if num <= 0.0 else float("inf")
    return max(num, 0.0) / den


# ------------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------------
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


def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def _move_outside(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> list[tuple[nn.Module, str, bool, torch.device]]:
    """Move every parameter / buffer outside the blocks to ``device``; returns what to move back."""
    inside = {id(m) for m in blocks.modules()}
    moved: list[tuple[nn.Module, str, bool, torch.device]] = []
    for module in model.modules():
        if id(module) in inside:
            continue
        for store, is_param in ((module._parameters, True), (module._buffers, False)):
            for key, tensor in store.items():
                if tensor is not None and tensor.device != device:
                    moved.append((module, key, is_param, tensor.device))
                    if is_param:
                        tensor.data = tensor.data.to(device)
                    else:
                        store[key] = tensor.to(device)
    return moved


def _move_back(moved: list[tuple[nn.Module, str, bool, torch.device]]) -> None:
    for module, key, is_param, device in moved:
        store = module._parameters if is_param else module._buffers
        tensor = store[key]
        if tensor is None:
            continue
        if is_param:
            tensor.data = tensor.data.to(device)
        else:
            store[key] = tensor.to(device)


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale, "cpu_peak_rss"


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@torch.no_grad()
def check_targets(model: nn.Module, config: OneShotConfig) -> int:
    """The number of layers ``config`` would prune in ``model``; a TicketlabError (e.g. a target
    pattern that matches nothing) before any calibration work is done."""
    blocks_path, blocks = find_blocks(model)
    return len(find_targets(model, blocks_path, blocks, config.targets, config.exclude))


@torch.no_grad()
def prune_model(model: nn.Module, calibration: torch.Tensor, config: OneShotConfig, *,
                attention_mask: torch.Tensor | None = None, device: str | torch.device = "cpu",
                progress: Progress | None = None) -> PruningReport:
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
    targets = find_targets(model, blocks_path, blocks, config.targets, config.exclude)
    by_block: dict[int, list[TargetLayer]] = {}
    for layer in targets:
        by_block.setdefault(layer.block, []).append(layer)
    last_block = max(by_block)

    nsamples, seqlen = calibration.shape
    token_masks = attention_mask.to(device=device).bool() if attention_mask is not None else None
    model_config = getattr(model, "config", None)
    saved_use_cache = getattr(model_config, "use_cache", None)
    was_training = model.training
    moved: list[tuple[nn.Module, str, bool, torch.device]] = []
    handle = progress(f"{config.describe()}: pruning {last_block + 1} blocks", last_block + 1) if progress else _Silent()
    layers_report: list[dict[str, Any]] = []
    masks: dict[str, torch.Tensor] = {}
    try:
        model.eval()
        if saved_use_cache is not None:
            model_config.use_cache = False
        moved = _move_outside(model, blocks, device)
        inps, inputs = _capture(model, blocks[0], calibration, attention_mask, device)
        _move_back(moved)
        moved = []
        outs = torch.empty_like(inps)
        for index in range(last_block + 1):
            block = blocks[index]
            home = _module_device(block)
            if home is not None and home != device:
                block.to(device)
            layers = by_block.get(index, [])
            if layers:
                hooks = _StatsHooks(layers, device)
                try:
                    for s in range(nsamples):
                        hooks.token_mask = token_masks[s] if token_masks is not None else None
                        inputs.call(block, s, inps[s:s + 1])
                        hooks.end_sample()
                finally:
                    hooks.remove()
                block_mask: dict[str, torch.Tensor] = {}
                entries: list[tuple[TargetLayer, dict[str, Any]]] = []
                factors: dict[int, torch.Tensor] = {}
                for layer in layers:
                    gram = hooks.grams[layer.name]
                    param = layer.module.weight
                    weight = param.t() if layer.transposed else param    # (out, in) view
                    t0 = time.perf_counter()
                    new_w, keep = prune_layer(weight, gram.matrix, config, name=layer.name, factors=factors)
                    seconds = time.perf_counter() - t0
                    pruned = new_w if new_w is not None else weight.to(torch.float32) * keep
                    error = relative_reconstruction_error(weight, pruned, gram.matrix)
                    if new_w is not None:
                        weight.copy_(new_w.to(param.dtype))
                    keep_param = (keep.t() if layer.transposed else keep).contiguous()
                    block_mask[f"{layer.relative}.weight"] = keep_param
                    masks[layer.parameter] = keep_param
                    entries.append((layer, {
                        "name": layer.name, "parameter": layer.parameter, "block": index,
                        "shape": list(param.shape), "sparsity": 0.0, "reconstruction_error": error,
                        "seconds": seconds, "calibration_tokens": gram.tokens,
                    }))
                del hooks, factors, gram   # free this block's statistics before the next
                Mask(block_mask).apply_(block)      # the one mechanism that zeroes pruned weights
                for layer, entry in entries:
                    w = layer.module.weight
                    entry["sparsity"] = float((w == 0).sum()) / w.numel()
                    layers_report.append(entry)
            if index < last_block:   # pruned outputs become the next block's inputs
                for s in range(nsamples):
                    outs[s] = inputs.call(block, s, inps[s:s + 1])[0]
                inps, outs = outs, inps
            if home is not None and home != device:
                block.to(home)
            handle.update(1)
    finally:
        handle.close()
        _move_back(moved)
        if saved_use_cache is not None:
            model_config.use_cache = saved_use_cache
        model.train(was_training)
    peak, source = _peak_memory(device)
    return PruningReport(
        method=config.method, sparsity=config.target_sparsity, pattern=config.pattern,
        layers=layers_report, wall_time=time.perf_counter() - start, peak_memory_bytes=peak,
        masks=Mask(masks), peak_memory_source=source, nsamples=int(nsamples), seqlen=int(seqlen),
        blocks=blocks_path, device=str(device), model_type=getattr(model_config, "model_type", None),
    )


__all__ = ["check_targets", "prune_layer", "prune_model", "relative_reconstruction_error"]
