"""The dependency graph of a vision model: which weights belong to one channel.

A `torch.fx` trace of the model (with the shapes of one example batch) is walked once. Every
Linear / Conv2d output opens a *channel space* (its output units). Channel-wise operations
(BatchNorm, activations, pooling, dropout) pass a space on; a flatten turns each channel into
``H·W`` consecutive columns; a concatenation along the channels lays spaces side by side at
offsets; an addition, subtraction or multiplication of two tensors *unites* their spaces (the
members of a residual addition must keep one channel set: ResNet-20's stages). A layer reading a
space owns columns of it. So a space ends as one coupled family (`ChannelFamily`): its producers
(rows and biases), its BatchNorms, and its consumers (columns, at an offset and span).

A space is *frozen* — never pruned, with the reason kept — when it feeds the network's output
(the classes), meets an operation the graph does not follow (a reshape other than flatten, a
grouped convolution, an unknown module or function), mixes with a tensor whose channels are not
tracked, or involves an ignored parameter. Frozen means kept whole, never mis-pruned.

Used twice, never traced twice elsewhere: `ticketlab.structure.layouts` turns the families into
channel groups before pruning, `ticketlab.deploy.compact` removes the dead ones after.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TicketlabError, first_line

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU, nn.Identity,
               nn.Dropout, nn.Dropout2d, nn.Hardtanh, nn.Hardswish, nn.Mish)
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
#: Functions and tensor methods that act on each channel alone (their first argument).
CHANNELWISE_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, torch.tanh, torch.sigmoid, F.silu,
                         F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                         torch.nn.functional.elu)
CHANNELWISE_METHODS = ("relu", "relu_", "sigmoid", "tanh", "clone", "contiguous")
_BINARY = (operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, torch.add,
           torch.sub, torch.mul)
_FLATTEN_CALLS = (torch.flatten, "flatten", "view", "reshape")
_SHAPE_QUERIES = ("size", "dim")


@dataclass
class Consumer:
    """A layer reading channels: ``module`` owns columns ``[base + j*span, base + (j+1)*span)`` of
    channel ``j`` (``span`` = H·W after a flatten, else 1)."""

    module: str
    base: int
    span: int


@dataclass
class ChannelFamily:
    """One coupled channel set after the unions: ``size`` channels, written by ``producers``
    (their rows and biases), normalised by ``norms``, read by ``consumers``; ``frozen`` says why it
    must stay whole (None: prunable). ``ops`` are the channel-wise operations between a single
    producer and a single consumer, in order (modules by name, or functions), and ``chain`` says
    whether the family is that simple chain (one producer, one consumer, no branch)."""

    size: int
    producers: list[str] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    ops: list[Any] = field(default_factory=list)
    frozen: str | None = None
    branched: bool = False

    @property
    def name(self) -> str:
        return self.producers[0] if self.producers else "?"

    @property
    def chain(self) -> bool:
        return (self.frozen is None and not self.branched and len(self.producers) == 1
                and len(self.consumers) == 1 and self.consumers[0].base == 0)


@dataclass(frozen=True)
class _Segment:
    """Channels ``[offset, offset + length)`` of a tensor belong to ``space`` (None: untracked)."""

    space: int | None
    offset: int
    length: int


@dataclass(frozen=True)
class _View:
    """How a tensor's channel dimension (dim 1) maps onto spaces; ``spatial`` columns per channel
    once flattened."""

    segments: tuple[_Segment, ...]
    spatial: int = 1

    @property
    def spaces(self) -> list[int]:
        return [s.space for s in self.segments if s.space is not None]


class _Walk:
    """The state of one walk over a traced graph: spaces, their unions, and each node's view."""

    def __init__(self, modules: dict[str, nn.Module], frozen_params: Iterable[str]):
        self.modules = modules
        self.frozen_modules = {p[: -len(".weight")] for p in frozen_params if p.endswith(".weight")}
        self.spaces: list[ChannelFamily] = []
        self.parent: list[int] = []
        self.views: dict[Any, _View | None] = {}
        self.seen_producers: set[str] = set()
        self.seen_consumers: set[str] = set()

    # --- spaces and their unions ------------------------------------------------------------------
    def new_space(self, size: int, producer: str) -> _View:
        self.spaces.append(ChannelFamily(size=size, producers=[producer]))
        self.parent.append(len(self.parent))
        return _View((_Segment(len(self.spaces) - 1, 0, size),))

    def root(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def space(self, index: int) -> ChannelFamily:
        return self.spaces[self.root(index)]

    def unite(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            self.spaces[ra].branched = True  # x op f(x): the channel takes two paths
            return
        first, second = sorted((ra, rb))
        keep, gone = self.spaces[first], self.spaces[second]
        if keep.size != gone.size:
            self.freeze_spaces([first, second], "an addition of tensors with different channel counts")
        keep.producers += gone.producers
        keep.consumers += gone.consumers
        keep.norms += gone.norms
        keep.ops, keep.branched = [], True
        keep.frozen = keep.frozen or gone.frozen
        self.parent[second] = first

    def freeze_spaces(self, indices: Iterable[int], reason: str) -> None:
        for index in indices:
            space = self.space(index)
            if space.frozen is None:
                space.frozen = reason

    def freeze(self, views: Iterable[_View | None], reason: str) -> None:
        for view in views:
            if view is not None:
                self.freeze_spaces(view.spaces, reason)

    def families(self) -> list[ChannelFamily]:
        return [space for index, space in enumerate(self.spaces) if self.root(index) == index]


def trace(model: nn.Module, example: torch.Tensor):
    """``model`` traced by torch.fx with shapes propagated from ``example`` (a batch on the model's
    device), or one sentence naming the failure and the way out. The shapes come from an eval-mode
    pass under no_grad, so no BatchNorm statistic moves; every module's mode is restored."""
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        traced = symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - any model fx cannot trace
        raise TicketlabError(f"The model cannot be traced by torch.fx ({type(err).__name__}: {first_line(err)}), "
                             "so its coupled channels are unknown; use --granularity unstructured.") from None
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            ShapeProp(traced).propagate(example)
    except Exception as err:  # noqa: BLE001
        raise TicketlabError(f"The traced model fails on an example batch of shape {tuple(example.shape)} "
                             f"({type(err).__name__}: {first_line(err)}); use --granularity unstructured.") from None
    finally:
        for module, training in modes.items():
            module.training = training
    return traced


def channel_families(model: nn.Module, example: torch.Tensor, *,
                     frozen_params: Sequence[str] = ()) -> list[ChannelFamily]:
    """Every coupled channel family of ``model`` (see the module docstring), in producer order.

    ``frozen_params`` are parameter names that must not change (``--ignore``): a family that writes
    or reads one is frozen. The model is not modified (it is traced on a copy's graph)."""
    traced = trace(model, example)
    walk = _Walk(dict(traced.named_modules()), frozen_params)
    for node in traced.graph.nodes:
        _visit(walk, node)
    return walk.families()


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _visit(walk: _Walk, node: Any) -> None:
    """Give ``node`` its view (or None) and record what it does to the spaces it touches."""
    if node.op in ("placeholder", "get_attr"):
        walk.views[node] = None
        return
    inputs = [walk.views.get(a) for a in node.all_input_nodes]
    if node.op == "output":
        walk.freeze(inputs, "feeds the network's output")
        return
    if node.op == "call_module":
        walk.views[node] = _module_view(walk, node, walk.modules[node.target], inputs)
    elif node.op in ("call_function", "call_method"):
        walk.views[node] = _function_view(walk, node, inputs)
    else:  # pragma: no cover - fx has no other node kinds
        walk.freeze(inputs, f"operation {node.op}")
        walk.views[node] = None
    view = walk.views[node]
    if view is not None and len(node.users) > 1:
        for index in view.spaces:
            walk.space(index).branched = True


def _first(walk: _Walk, node: Any) -> _View | None:
    arg = node.args[0] if node.args else None
    return walk.views.get(arg) if hasattr(arg, "op") else None


def _module_view(walk: _Walk, node: Any, module: nn.Module, inputs: list[_View | None]) -> _View | None:
    view = _first(walk, node)
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return _producer(walk, node, module, view)
    if view is None:
        return None
    if isinstance(module, NORMS):
        for index in view.spaces:
            walk.space(index).norms.append(node.target)
            walk.space(index).ops.append(node.target)
        return view
    if isinstance(module, ACTIVATIONS + POOLS):
        for index in view.spaces:
            walk.space(index).ops.append(node.target)
        return view
    if isinstance(module, nn.Flatten):
        return _flattened(walk, node, view)
    walk.freeze(inputs, f"module {node.target!r} ({type(module).__name__}), which the graph does not follow")
    return None


def _function_view(walk: _Walk, node: Any, inputs: list[_View | None]) -> _View | None:
    target, view = node.target, _first(walk, node)
    if target in _SHAPE_QUERIES or (target is getattr and node.args[1:2] == ("shape",)):
        return None
    if target in CHANNELWISE_FUNCTIONS or target in CHANNELWISE_METHODS:
        if view is not None:
            for index in view.spaces:
                walk.space(index).ops.append(target)
        return view
    if target in _FLATTEN_CALLS and view is not None:
        return _flattened(walk, node, view)
    if target in _BINARY:
        return _binary(walk, node, inputs)
    if target is torch.cat:
        return _concatenated(walk, node)
    walk.freeze(inputs, f"the operation {getattr(target, '__name__', target)!r}, which the graph does not follow")
    return None


def _producer(walk: _Walk, node: Any, module: nn.Module, view: _View | None) -> _View | None:
    """A Linear / Conv2d: it reads ``view`` (owning its columns) and opens a space of its outputs."""
    name = node.target
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        walk.freeze([view], f"the grouped convolution {name!r}")
        out = walk.new_space(module.out_channels, name)
        walk.freeze([out], f"the grouped convolution {name!r}")
        return out
    _consume(walk, node, module, view)
    size = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    out = walk.new_space(size, name)
    if name in walk.seen_producers:
        walk.freeze([out], f"{name!r} is called more than once (shared weights)")
    walk.seen_producers.add(name)
    if name in walk.frozen_modules:
        walk.freeze([out], f"{name}.weight is ignored")
    shape = _shape(node)
    if shape is None or len(shape) not in (2, 4):
        walk.freeze([out], f"{name!r} outputs a tensor of shape {shape}, which the graph does not follow")
    return out


def _consume(walk: _Walk, node: Any, module: nn.Module, view: _View | None) -> None:
    """Record ``node``'s module as a reader of ``view``'s channels (columns at each segment)."""
    if view is None:
        return
    name = node.target
    input_shape = _shape(node.args[0]) if node.args else None
    expected_ndim = 2 if isinstance(module, nn.Linear) else 4
    if input_shape is None or len(input_shape) != expected_ndim or (isinstance(module, nn.Conv2d) and view.spatial != 1):
        walk.freeze([view], f"{name!r} reads a tensor of shape {input_shape}, which the graph does not follow")
        return
    if name in walk.seen_consumers:
        walk.freeze([view], f"{name!r} is called more than once (shared weights)")
    walk.seen_consumers.add(name)
    for segment in view.segments:
        if segment.space is None:
            continue
        family = walk.space(segment.space)
        family.consumers.append(Consumer(name, segment.offset * view.spatial, view.spatial))
        if name in walk.frozen_modules:
            walk.freeze_spaces([segment.space], f"{name}.weight is ignored")


def _flattened(walk: _Walk, node: Any, view: _View) -> _View | None:
    """``(N, C, H, W)`` -> ``(N, C·H·W)``: each channel becomes H·W consecutive columns."""
    before, after = _shape(node.args[0]), _shape(node)
    if before is None or after is None or len(after) != 2 or before[:2] != (after[0], before[1]) or \
            math.prod(before[1:]) != after[1]:
        if before is not None and after is not None and before == after:
            return view
        walk.freeze([view], f"the reshape {getattr(node.target, '__name__', node.target)!r} from {before} to {after}, "
                            "which is not a flatten of the channels")
        return None
    return _View(view.segments, view.spatial * math.prod(before[2:]))


def _binary(walk: _Walk, node: Any, inputs: list[_View | None]) -> _View | None:
    """``a + b`` / ``a - b`` / ``a * b``: tensors with spaces unite them (segment by segment);
    with a number the view passes on; with an untracked tensor the spaces freeze."""
    tensors = [a for a in node.args[:2] if hasattr(a, "op")]
    views = [walk.views.get(a) for a in tensors]
    if len(tensors) == 1:
        return views[0]
    a, b = views
    if a is None or b is None:
        walk.freeze([a, b], f"an elementwise {getattr(node.target, '__name__', node.target)!r} with a tensor whose "
                            "channels the graph does not track")
        return None
    shape_a, shape_b = (_shape(t) for t in tensors)
    layout = lambda v: [(s.offset, s.length, s.space is None) for s in v.segments]  # noqa: E731
    if shape_a != shape_b or a.spatial != b.spatial or layout(a) != layout(b):
        walk.freeze([a, b], "an elementwise operation on tensors of different channel layouts (broadcasting)")
        return None
    for sa, sb in zip(a.segments, b.segments):
        if sa.space is not None and sb.space is not None:
            walk.unite(sa.space, sb.space)
    return a


def _concatenated(walk: _Walk, node: Any) -> _View | None:
    """``torch.cat([a, b, ...], dim=1)``: the spaces side by side at offsets (untracked parts keep
    their place)."""
    parts = node.args[0] if node.args else node.kwargs.get("tensors", ())
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    views = [walk.views.get(p) for p in parts]
    shape = _shape(node)
    if shape is None or dim not in (1, 1 - len(shape)) or len(shape) not in (2, 4) or \
            any(v is not None and v.spatial != 1 for v in views):
        walk.freeze(views, f"a concatenation along dim {dim}, which the graph does not follow")
        return None
    segments, offset = [], 0
    for part, view in zip(parts, views):
        length = _shape(part)[1] if _shape(part) is not None else 0
        if view is None:
            segments.append(_Segment(None, offset, length))
        else:
            segments += [_Segment(s.space, offset + s.offset, s.length) for s in view.segments]
        offset += length
    return _View(tuple(segments))


__all__ = ["ChannelFamily", "Consumer", "channel_families", "trace"]
