"""Structural compaction: physically remove the hidden units and channels a sparse network cannot use.

At ticket densities many units have every incoming weight pruned ("dead in": the unit emits a
constant) or every outgoing weight pruned ("dead out": nothing reads it). Both can go:

* dead out — delete the producer's row (and bias, BatchNorm entries) and the consumer's column;
* dead in  — the unit's output is a constant ``c`` (the producer's bias pushed through BatchNorm,
  ReLU and pooling). With ``c == 0`` it is deleted; otherwise ``c`` is folded into the consumer's
  bias (``b += W[:, j] · c``) and deleted, which is exact when the consumer is a Linear layer or
  an unpadded conv. A constant channel entering a *padded* conv is kept: zero padding makes its
  contribution position-dependent at the borders, so no bias can replace it.

Which layers feed which is read from a `torch.fx` trace: a producer (Linear / Conv2d) is compacted
only when its output reaches exactly one consumer through channel-wise operations (BatchNorm,
activations, pooling, dropout, flatten). Outputs that meet a residual addition, a concatenation or
the network's output are left alone, so in ResNet-20 only the inner channels of each block shrink.
Removing units can make further units dead (a consumer row that loses its last weights), so the
passes repeat until nothing changes. The compacted network computes what the masked one computes,
up to float rounding of the folded biases (checked to 1e-5 relative in the tests).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TicketlabError

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU, nn.Identity,
                nn.Dropout)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_FUNCTIONS = (F.relu, torch.relu, torch.flatten, F.gelu, torch.tanh, torch.sigmoid)


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
    """Layer widths before and after, and what could not be removed (and why)."""

    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    kept_constant: dict[str, int] = field(default_factory=dict)
    untouched: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"widths_before": self.widths_before, "widths_after": self.widths_after,
                "kept_constant_units": self.kept_constant, "not_compacted": self.untouched}

    @property
    def removed(self) -> int:
        return sum(self.widths_before[n] - self.widths_after[n] for n in self.widths_before)


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def find_chains(model: nn.Module, example: torch.Tensor) -> tuple[list[Chain], list[str]]:
    """Every compactable producer -> consumer chain, and the layers that are not (with reasons)."""
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        traced = symbolic_trace(model)
        ShapeProp(traced).propagate(example)
    except Exception as err:  # noqa: BLE001 - any model fx cannot trace is simply not compacted
        raise TicketlabError(f"The model cannot be traced for compaction ({type(err).__name__}).") from None
    modules = dict(traced.named_modules())
    chains, untouched = [], []
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], (nn.Linear, nn.Conv2d)):
            continue
        chain = _follow(node, modules)
        if chain is None:
            untouched.append(node.target)
        else:
            chains.append(chain)
    return chains, untouched


def _follow(node, modules: dict[str, nn.Module]) -> Chain | None:
    """Walk from a producer through single-user channel-wise ops to the consumer, or None."""
    ops: list[Any] = []
    spatial = 1
    current = node
    producer = modules[node.target]
    if isinstance(producer, nn.Conv2d) and producer.groups != 1:
        return None
    while True:
        users = list(current.users)
        if len(users) != 1:
            return None
        nxt = users[0]
        if nxt.op == "call_module":
            module = modules[nxt.target]
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                if isinstance(module, nn.Conv2d) and (module.groups != 1 or not isinstance(producer, nn.Conv2d)):
                    return None
                if isinstance(module, nn.Linear) and isinstance(producer, nn.Conv2d) and spatial == 1:
                    return None  # a conv feeding a Linear must pass a flatten
                return Chain(node.target, nxt.target, ops, spatial)
            if isinstance(module, nn.Flatten):
                shape = current.meta["tensor_meta"].shape
                spatial = math.prod(shape[2:]) if len(shape) > 2 else 1
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.track_running_stats \
                    and module.running_mean is not None:
                ops.append(nxt.target)
            elif isinstance(module, _ACTIVATIONS + _POOLS) and not (
                    isinstance(module, nn.AvgPool2d) and _pair(module.padding) != (0, 0)):
                ops.append(nxt.target)
            else:
                return None
        elif nxt.op == "call_function" and nxt.target in _FUNCTIONS and nxt.args[0] is current:
            if nxt.target is torch.flatten:
                shape = current.meta["tensor_meta"].shape
                spatial = math.prod(shape[2:]) if len(shape) > 2 else 1
            else:
                ops.append(nxt.target)
        else:
            return None
        current = nxt


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
        elif isinstance(op, (nn.Dropout, nn.Identity) + _POOLS):
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
    new.running_mean = norm.running_mean[keep].clone()
    new.running_var = norm.running_var[keep].clone()
    return new


def _width(model: nn.Module, name: str) -> int:
    return int(_module(model, name).weight.shape[0])


def compact_model(model: nn.Module, example: torch.Tensor, *, max_passes: int = 20) -> tuple[nn.Module, CompactionReport]:
    """A compacted copy of ``model`` (eval mode) and the widths before and after.

    ``example`` is one input batch of the right shape (its values do not matter). The original
    model is not modified.
    """
    compacted = copy.deepcopy(model).eval()
    report = CompactionReport()
    chains, report.untouched = find_chains(compacted, example)
    report.widths_before = {c.producer: _width(compacted, c.producer) for c in chains}
    for _ in range(max_passes):
        report.kept_constant = {}
        changed = False
        for chain in chains:
            changed |= _compact_chain(compacted, chain, report)
        if not changed:
            break
    report.widths_after = {c.producer: _width(compacted, c.producer) for c in chains}
    return compacted, report


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


__all__ = ["Chain", "CompactionReport", "compact_model", "find_chains", "resize_to_state"]
