"""Structural compaction: physically remove the hidden units and channels a sparse network cannot use.

At ticket densities many units have every incoming weight pruned ("dead in": the unit emits a
constant) or every outgoing weight pruned ("dead out": nothing reads it); a channel ticket
(``--granularity channel``) prunes whole coupled channels. All of them can go:

* dead out — delete the channel from every layer that writes it (rows, biases), its BatchNorm
  entries, and every reader's columns. This holds for any coupled family of the dependency graph
  (`ticketlab.structure.graph`): the members of a residual addition share a channel set, so a
  residual channel goes from the stem, every block's last conv and every shortcut at once, once
  no reader uses it; a concatenation's reader loses the columns at the channel's offset;
* dead in — for a simple chain (one producer, one reader, channel-wise operations between) the
  unit's output is a constant ``c`` (the producer's bias pushed through BatchNorm, ReLU and
  pooling). With ``c == 0`` it is deleted; otherwise ``c`` is folded into the reader's bias
  (``b += W[:, j] · c``) and deleted, which is exact when the reader is a Linear layer or an
  unpadded conv. A constant channel entering a *padded* conv is kept: zero padding makes its
  contribution position-dependent at the borders, so no bias can replace it.

Frozen families (the classes of the output layer, operations the graph does not follow) are left
alone and reported. Removing units can make further units dead (a reader row that loses its last
weights), so the passes repeat, re-tracing the shrunken model, until nothing changes. The
compacted network computes what the masked one computes, up to float rounding of the folded
biases (checked to 1e-5 relative in the tests).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..structure.graph import POOLS, ChannelFamily, Consumer, channel_families


@dataclass
class Chain:
    """A producer whose every output unit reaches exactly one consumer through channel-wise ``ops``.

    ``spatial`` is how many consumer inputs one producer unit becomes (H·W when a conv's output is
    flattened into a Linear layer, else 1).
    """

    producer: str
    consumer: str
    ops: list[str | Any]     # module names (resolved on use: compaction replaces modules) or functions
    spatial: int


@dataclass
class CompactionReport:
    """Channel counts of every prunable family (by its first producer) before and after, and what
    could not be removed (and why)."""

    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    kept_constant: dict[str, int] = field(default_factory=dict)
    untouched: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"widths_before": self.widths_before, "widths_after": self.widths_after,
                "kept_constant_units": self.kept_constant, "not_compacted": self.untouched}

    @property
    def removed(self) -> int:
        return sum(self.widths_before[n] - self.widths_after.get(n, self.widths_before[n]) for n in self.widths_before)


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def as_chain(model: nn.Module, family: ChannelFamily) -> Chain | None:
    """The family as a simple producer -> consumer chain, where dead-in units emit a constant that
    can be pushed through its operations (BatchNorm with running statistics, unpadded average
    pooling), or None (then only dead-out removal applies)."""
    if not family.chain:
        return None
    for op in family.ops:
        module = _module(model, op) if isinstance(op, str) else None
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and (not module.track_running_stats
                                                                     or module.running_mean is None):
            return None
        if isinstance(module, nn.AvgPool2d) and _pair(module.padding) != (0, 0):
            return None
    consumer = family.consumers[0]
    if _module(model, consumer.module).weight.shape[1] != family.size * consumer.span:
        return None   # the reader also reads other channels (a concatenation)
    return Chain(family.producers[0], consumer.module, list(family.ops), consumer.span)


def _constant_through(model: nn.Module, ops: list[Any], value: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Push per-unit constants (one per unit in ``units``) through the channel-wise ops (eval mode)."""
    out = value.clone()
    for op in ops:
        op = _module(model, op) if isinstance(op, str) else op
        if isinstance(op, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mean, var = op.running_mean[units], op.running_var[units]
            out = (out - mean) / torch.sqrt(var + op.eps)
            if op.affine:
                out = out * op.weight[units] + op.bias[units]
        elif isinstance(op, (nn.Dropout, nn.Identity) + POOLS):
            continue
        elif isinstance(op, nn.Module):
            out = op(out)
        else:
            out = op(out)
    return out


def _out_dead(consumer: nn.Module, chain: Chain, width: int) -> torch.Tensor:
    """(width,) bool: producer units no consumer weight reads."""
    weight = consumer.weight.detach()
    if isinstance(consumer, nn.Linear):
        return (weight.reshape(weight.shape[0], width, chain.spatial) != 0).sum(dim=(0, 2)) == 0
    return (weight != 0).sum(dim=(0, 2, 3)) == 0


@torch.no_grad()
def _compact_chain(model: nn.Module, chain: Chain, report: CompactionReport) -> bool:
    """Remove the removable units of one chain in place; True if anything changed."""
    producer, consumer = _module(model, chain.producer), _module(model, chain.consumer)
    width = producer.weight.shape[0]
    in_dead = (producer.weight.detach().reshape(width, -1) != 0).sum(dim=1) == 0
    out_dead = _out_dead(consumer, chain, width)
    constant_units = (in_dead & ~out_dead).nonzero().flatten()
    bias = producer.bias.detach() if producer.bias is not None else torch.zeros(width, dtype=producer.weight.dtype)
    constants = _constant_through(model, chain.ops, bias[constant_units], constant_units)
    padded = isinstance(consumer, nn.Conv2d) and any(p != 0 for p in _pair(consumer.padding))
    removable = out_dead.clone()
    fold = []
    for unit, value in zip(constant_units.tolist(), constants.tolist()):
        if value == 0.0:
            removable[unit] = True
        elif not padded:
            removable[unit] = True
            fold.append((unit, value))
        else:
            report.kept_constant[chain.producer] = report.kept_constant.get(chain.producer, 0) + 1
    if not bool(removable.any()) or bool(removable.all()):
        return False  # nothing to do, or the layer would vanish (keep one unit: shapes stay valid)
    if fold:
        _fold_constants(model, chain, fold)
    keep = (~removable).nonzero().flatten()
    _shrink_producer(model, chain, keep)
    _shrink_consumer(model, chain, keep, width)
    return True


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)  # type: ignore[return-value]


def _fold_constants(model: nn.Module, chain: Chain, fold: list[tuple[int, float]]) -> None:
    """Add each constant unit's contribution to the consumer's bias (creating one if needed)."""
    consumer = _module(model, chain.consumer)
    weight = consumer.weight.detach()
    if consumer.bias is None:
        consumer.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
    for unit, value in fold:
        if isinstance(consumer, nn.Linear):
            columns = weight[:, unit * chain.spatial:(unit + 1) * chain.spatial]
            consumer.bias.data += columns.sum(dim=1) * value
        else:
            consumer.bias.data += weight[:, unit].sum(dim=(1, 2)) * value


def _shrink_producer(model: nn.Module, chain: Chain, keep: torch.Tensor) -> None:
    producer = _module(model, chain.producer)
    _set_module(model, chain.producer, _sliced(producer, out_index=keep))
    for op in chain.ops:
        if isinstance(op, str) and isinstance(_module(model, op), (nn.BatchNorm1d, nn.BatchNorm2d)):
            _set_module(model, op, _sliced_norm(_module(model, op), keep))


def _shrink_consumer(model: nn.Module, chain: Chain, keep: torch.Tensor, width: int) -> None:
    consumer = _module(model, chain.consumer)
    if isinstance(consumer, nn.Linear) and chain.spatial > 1:
        columns = (keep.view(-1, 1) * chain.spatial + torch.arange(chain.spatial)).flatten()
    else:
        columns = keep
    _set_module(model, chain.consumer, _sliced(consumer, in_index=columns))


def _sliced(layer: nn.Module, *, out_index: torch.Tensor | None = None, in_index: torch.Tensor | None = None) -> nn.Module:
    """A new Linear / Conv2d (groups 1) keeping the given output rows and / or input columns."""
    weight = layer.weight.detach()
    if out_index is not None:
        weight = weight[out_index]
    if in_index is not None:
        weight = weight[:, in_index]
    bias = layer.bias.detach() if layer.bias is not None else None
    if bias is not None and out_index is not None:
        bias = bias[out_index]
    if isinstance(layer, nn.Linear):
        new: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        new = nn.Conv2d(weight.shape[1], weight.shape[0], layer.kernel_size, stride=layer.stride,
                        padding=layer.padding, dilation=layer.dilation, bias=bias is not None,
                        padding_mode=layer.padding_mode)
    new = new.to(device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


def _sliced_norm(norm: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = copy.deepcopy(norm)
    new.num_features = int(keep.numel())
    for name in ("weight", "bias"):
        if getattr(norm, name) is not None:
            setattr(new, name, nn.Parameter(getattr(norm, name).detach()[keep].clone()))
    if norm.running_mean is not None:
        new.running_mean = norm.running_mean[keep].clone()
        new.running_var = norm.running_var[keep].clone()
    return new


def _width(model: nn.Module, name: str) -> int:
    return int(_module(model, name).weight.shape[0])


def _dead_columns(model: nn.Module, consumer: Consumer, size: int) -> torch.Tensor:
    """(size,) bool: channels whose columns ``consumer`` never reads (all weights zero)."""
    weight = _module(model, consumer.module).weight.detach()
    window = weight.narrow(1, consumer.base, size * consumer.span).transpose(0, 1)
    return (window.reshape(size, -1) != 0).sum(dim=1) == 0


@torch.no_grad()
def _compact_family(model: nn.Module, family: ChannelFamily) -> bool:
    """Remove the channels of a coupled family that no reader uses; True if anything changed."""
    if not family.consumers:
        return False
    dead = torch.ones(family.size, dtype=torch.bool)
    for consumer in family.consumers:
        dead &= _dead_columns(model, consumer, family.size)
    if not bool(dead.any()) or bool(dead.all()):
        return False  # nothing to do, or every channel would go (keep them: shapes stay valid)
    keep = (~dead).nonzero().flatten()
    for producer in family.producers:
        _set_module(model, producer, _sliced(_module(model, producer), out_index=keep))
    for norm in family.norms:
        _set_module(model, norm, _sliced_norm(_module(model, norm), keep))
    for consumer in family.consumers:
        layer = _module(model, consumer.module)
        columns = torch.ones(layer.weight.shape[1], dtype=torch.bool)
        for unit in dead.nonzero().flatten().tolist():
            start = consumer.base + unit * consumer.span
            columns[start: start + consumer.span] = False
        _set_module(model, consumer.module, _sliced(layer, in_index=columns.nonzero().flatten()))
    return True


def compact_model(model: nn.Module, example: torch.Tensor, *, max_passes: int = 20) -> tuple[nn.Module, CompactionReport]:
    """A compacted copy of ``model`` (eval mode) and the channel counts before and after.

    ``example`` is one input batch of the right shape (its values do not matter). The original
    model is not modified. Families come from the dependency graph (`channel_families`); simple
    chains are compacted with dead-in folding, every other family by dead-out removal. Each pass
    traces the shrunken copy once and compacts every family whose readers no earlier family of the
    pass has reshaped (a concatenation's reader holds several families at offsets that shift);
    passes repeat until one changes nothing (its count of constant units kept is the report's), at
    most ``max_passes`` times the number of families.
    """
    compacted = copy.deepcopy(model).eval()
    report = CompactionReport()
    families = channel_families(compacted, example)
    for family in families:
        if family.frozen is None:
            report.widths_before[family.name] = family.size
        else:
            report.untouched[family.name] = family.frozen
    for _ in range(max_passes * (len(families) + 1)):
        if not _compact_pass(compacted, channel_families(compacted, example), report):
            break
    report.widths_after = {f.name: f.size for f in channel_families(compacted, example) if f.frozen is None}
    return compacted, report


def _compact_pass(model: nn.Module, families: list[ChannelFamily], report: CompactionReport) -> bool:
    """Compact every family of one trace whose readers are as the trace saw them; True if any shrank."""
    report.kept_constant = {}
    reshaped: set[str] = set()
    changed = False
    for family in families:
        readers = {c.module for c in family.consumers}
        if family.frozen is not None or readers & reshaped:
            continue
        chain = as_chain(model, family)
        if _compact_chain(model, chain, report) if chain is not None else _compact_family(model, family):
            reshaped |= readers
            changed = True
    return changed


def resize_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild ``model``'s Linear / Conv / BatchNorm modules with the shapes found in ``state``.

    A compacted network differs from its registered architecture only in those modules' widths
    (and biases added by folding), so the architecture plus the compacted state dict is enough to
    rebuild it. Returns ``model`` (changed in place).
    """
    for name, module in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        weight = state.get(f"{prefix}weight")
        if weight is None:
            continue
        has_bias = f"{prefix}bias" in state
        if isinstance(module, nn.Linear) and (tuple(weight.shape) != tuple(module.weight.shape)
                                              or has_bias != (module.bias is not None)):
            _set_module(model, name, nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias))
        elif isinstance(module, nn.Conv2d) and (tuple(weight.shape) != tuple(module.weight.shape)
                                                or has_bias != (module.bias is not None)):
            _set_module(model, name, nn.Conv2d(weight.shape[1] * module.groups, weight.shape[0], module.kernel_size,
                                               stride=module.stride, padding=module.padding, dilation=module.dilation,
                                               groups=module.groups, bias=has_bias, padding_mode=module.padding_mode))
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and weight.shape[0] != module.num_features:
            _set_module(model, name, type(module)(weight.shape[0], eps=module.eps, momentum=module.momentum,
                                                  affine=module.affine))
    return model


__all__ = ["Chain", "CompactionReport", "as_chain", "compact_model", "resize_to_state"]
