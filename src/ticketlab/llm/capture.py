"""What the first transformer block receives, captured once, replayed for every block; moving modules.

The model runs on each calibration batch with a forward pre-hook (``with_kwargs=True``) on block 0
that records the hidden states *and every other positional and keyword argument the block
received* — attention masks, rotary ``position_embeddings``, ``position_ids``, ``cache_position``
— then raises a private exception to stop the pass. Replaying those arguments is what keeps the
blocks' outputs exact; dropping them (a common bug) silently changes the attention. Arguments equal
across batches are stored once; KV caches are dropped.

Calibration runs in batches of samples (`calibration_batch_size`: as many as a quarter of the free
memory holds, overridable): one block call per batch instead of one per sample.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError
from ..memory import free_memory_bytes

#: The most samples one calibration batch holds, whatever memory allows.
MAX_BATCH = 64


class _StopForward(Exception):
    """Raised by the capture hook on block 0 to end the model's forward pass early."""


@dataclass
class BlockInputs:
    """Per-batch arguments of a block besides the hidden states (which live in the buffers)."""

    batch_size: int
    args: list[tuple[Any, ...]] = field(default_factory=list)      # positional args after hidden
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    hidden_as_kwarg: bool = False

    def batches(self, nsamples: int) -> list[slice]:
        return [slice(s, min(s + self.batch_size, nsamples)) for s in range(0, nsamples, self.batch_size)]

    def call(self, block: nn.Module, batch: int, hidden: torch.Tensor) -> torch.Tensor:
        """Run ``block`` on ``hidden`` (batch, seqlen, hidden) with batch ``batch``'s recorded arguments."""
        kwargs = dict(self.kwargs[batch])
        if self.hidden_as_kwarg:
            out = block(*self.args[batch], hidden_states=hidden, **kwargs)
        else:
            out = block(hidden, *self.args[batch], **kwargs)
        if isinstance(out, (tuple, list)):  # transformers < 4.5x returned (hidden, attn, cache)
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise TicketlabError(f"A {type(block).__name__} block returned {type(out).__name__}, not hidden states.")
        return out


def _is_cache(value: Any) -> bool:
    return any(cls.__name__.endswith("Cache") for cls in type(value).__mro__)


def _shared(value: Any, reference: Any) -> Any:
    """``reference`` when ``value`` equals it (identical masks / rotary tables are stored once)."""
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
    """Drop KV caches (replaying one would make every batch attend to the previous ones)."""
    if _is_cache(value):
        return None
    if isinstance(value, tuple):
        return tuple(_sanitize(v) for v in value)
    return value


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def calibration_batch_size(model: nn.Module, nsamples: int, seqlen: int, device: torch.device) -> int:
    """Samples per block call: a quarter of the free memory over a generous per-sample estimate
    (hidden states, attention scores and the MLP's intermediate activations in fp32)."""
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 1024)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 16)
    inner = int(getattr(config, "intermediate_size", 0) or getattr(config, "n_inner", 0) or 4 * hidden)
    per_sample = 4 * seqlen * (16 * hidden + 3 * inner + 2 * heads * seqlen)
    free = free_memory_bytes(device)
    if free is None:
        return 1
    return max(1, min(nsamples, MAX_BATCH, free // 4 // max(1, per_sample)))


@torch.no_grad()
def capture_block_inputs(model: nn.Module, block0: nn.Module, calibration: torch.Tensor,
                         attention_mask: torch.Tensor | None, device: torch.device,
                         batch_size: int = 1) -> tuple[torch.Tensor, BlockInputs]:
    """Hidden states entering block 0, (nsamples, seqlen, hidden) on ``device``, and the other arguments."""
    nsamples = calibration.shape[0]
    inputs = BlockInputs(batch_size=batch_size)
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

    buffer: torch.Tensor | None = None
    use_cache = _accepts(model, "use_cache")
    handle = block0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for index, rows in enumerate(inputs.batches(nsamples)):
            call: dict[str, Any] = {"input_ids": calibration[rows].to(device)}
            if attention_mask is not None:
                call["attention_mask"] = attention_mask[rows].to(device)
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
            count = rows.stop - rows.start
            if hidden.dim() < 2 or hidden.shape[0] != count:
                raise TicketlabError(f"The first block received hidden states of shape {tuple(hidden.shape)}, "
                                     f"expected ({count}, seqlen, hidden).")
            if buffer is None:
                buffer = torch.empty((nsamples, *hidden.shape[1:]), dtype=hidden.dtype, device=device)
            buffer[rows] = hidden.to(device)
            args = _sanitize(seen["args"])
            kwargs = {k: _sanitize(v) for k, v in seen["kwargs"].items()}
            if index > 0:
                args = _shared(args, inputs.args[0])
                kwargs = {k: _shared(v, inputs.kwargs[0].get(k)) for k, v in kwargs.items()}
            inputs.args.append(args)
            inputs.kwargs.append(kwargs)
            inputs.hidden_as_kwarg = seen["as_kwarg"]
    finally:
        handle.remove()
    assert buffer is not None
    return buffer, inputs


@contextlib.contextmanager
def visiting(module: nn.Module, device: torch.device, exclude: nn.Module | None = None) -> Iterator[None]:
    """Run the body with ``module``'s parameters and buffers on ``device``, then put them home;
    those of ``exclude`` and its submodules stay where they are (the capture moves everything
    outside the transformer blocks, which visit the device one at a time afterwards).

    Why not ``module.to(device)`` and back: moving back allocates fresh host memory for every tensor
    and faults its pages in while copying (measured on an H200: 22 ms per LLaMA-7B weight, half of
    Wanda's time). Here each tensor is copied back *into* the host tensor it came from, whose pages
    are already resident, and that tensor is reinstated. Tensors already on ``device`` stay put.
    """
    staying = {id(sub) for sub in exclude.modules()} if exclude is not None else set()
    homes: list[tuple[dict, str, bool, torch.Tensor]] = []
    for sub in module.modules():
        if id(sub) in staying:
            continue
        for store, is_param in ((sub._parameters, True), (sub._buffers, False)):
            for key, tensor in store.items():
                if tensor is None or tensor.device == device:
                    continue
                home = tensor.data if is_param else tensor
                homes.append((store, key, is_param, home))
                if is_param:
                    tensor.data = home.to(device)
                else:
                    store[key] = home.to(device)
    try:
        yield
    finally:
        for store, key, is_param, home in homes:
            current = store[key]
            if current is None:
                continue
            visited = current.data if is_param else current
            if visited.shape == home.shape and visited.dtype == home.dtype:
                home.copy_(visited)
            else:   # replaced by something else while away: move it like `.to` would
                home = visited.to(home.device)
            if is_param:
                current.data = home
            else:
                store[key] = home


__all__ = ["BlockInputs", "Calibration", "MAX_BATCH", "calibration_batch_size", "capture_block_inputs", "inference_mode",
           "visiting"]


class Calibration:
    """The activation buffers and replayed arguments of the block being processed: ``hidden``
    (nsamples, seqlen, width) and its spare twin; ``token_masks`` (nsamples, seqlen) bool, on the
    device once, so padding is left out of the statistics without a transfer per batch."""

    def __init__(self, hidden: torch.Tensor, inputs: BlockInputs, token_masks: torch.Tensor | None):
        self.hidden, self.inputs, self.token_masks = hidden, inputs, token_masks
        self.spare = torch.empty_like(hidden)
        self.batches = inputs.batches(hidden.shape[0])

    def run(self, block: nn.Module, hooks: Any = None, keep_outputs: bool = False) -> None:
        """Every batch through ``block`` (statistics in ``hooks``); the outputs become the next inputs."""
        for index, rows in enumerate(self.batches):
            if hooks is not None:
                hooks.token_mask = self.token_masks[rows] if self.token_masks is not None else None
            out = self.inputs.call(block, index, self.hidden[rows])
            if hooks is not None:
                hooks.end_call()
            if keep_outputs:
                self.spare[rows] = out
        if keep_outputs:
            self.hidden, self.spare = self.spare, self.hidden


@contextlib.contextmanager
def inference_mode(model: nn.Module) -> Iterator[None]:
    """Calibration runs ``model`` in eval mode (no dropout) with its key/value cache off; both
    are restored afterwards, whatever happens."""
    config = getattr(model, "config", None)
    saved_use_cache, was_training = getattr(config, "use_cache", None), model.training
    model.eval()
    if saved_use_cache is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if saved_use_cache is not None:
            config.use_cache = saved_use_cache
        model.train(was_training)
