"""The `GroupLayout` of a model at a granularity: the one place groups are defined before pruning.

* ``block:RxC`` — a `BlockFamily` per prunable weight (its tiles);
* ``channel`` — a `SliceFamily` per coupled channel family of the dependency graph
  (`ticketlab.structure.graph`): producers' rows, consumers' columns (``span`` H·W of them after a
  flatten); frozen families (the output layer's classes, untraceable ops, ignored layers) are
  listed in ``layout.frozen`` with their reason and never pruned;
* ``head`` on a vision model is refused (it has no attention heads); transformers get their
  channel and head layouts from `ticketlab.structure.transformers`.

Unstructured and N:M selection need no layout (`group_layout` returns None for them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import TicketlabError
from .granularity import Granularity
from .graph import ChannelFamily, channel_families
from ..groups import BlockFamily, GroupLayout, Member, SliceFamily


def group_layout(model: nn.Module, granularity: "Granularity | str", names: Sequence[str],
                 example: torch.Tensor | None = None) -> GroupLayout | None:
    """The layout of ``model``'s prunable parameters ``names`` (the mask's, in order) at
    ``granularity``; None for unstructured and N:M. ``example`` is one input batch (channels need it
    to trace the model; its values do not matter)."""
    granularity = Granularity.parse(granularity)
    params = dict(model.named_parameters())
    shapes = {n: tuple(params[n].shape) for n in names}
    if granularity.kind == "block":
        return block_layout(shapes, granularity.rows, granularity.cols)
    if not granularity.coupled:
        return None
    if isinstance(getattr(getattr(model, "config", None), "model_type", None), str):
        from .transformers import transformer_layout   # Hugging Face: heads and channels from the table
        return transformer_layout(model, granularity.units, names)
    if "head" in granularity.units:
        raise TicketlabError("--granularity head needs attention heads, which this model does not have; use "
                             "--granularity channel.")
    if example is None:
        raise TicketlabError("Channel groups need an example input batch to trace the model.")
    return channel_layout(model, names, example)


def block_layout(shapes: dict[str, tuple[int, ...]], rows: int, cols: int) -> GroupLayout:
    """One `BlockFamily` per weight: its ``rows x cols`` tiles (a weight they do not tile is one
    sentence naming it)."""
    layout = GroupLayout(dict(shapes))
    for name, shape in shapes.items():
        family = BlockFamily(name=name, shape=shape, rows=rows, cols=cols)
        layout.families[name] = family
    return layout


def channel_layout(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> GroupLayout:
    """Channel groups from the dependency graph. Linear / Conv weights that are not in ``names``
    (ignored) freeze every family that writes or reads them."""
    params = dict(model.named_parameters())
    shapes = {n: tuple(params[n].shape) for n in names}
    untouchable = [f"{m}.weight" for m, module in model.named_modules()
                   if isinstance(module, (nn.Linear, nn.Conv2d)) and f"{m}.weight" not in shapes]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    layout = GroupLayout(shapes)
    for family in channel_families(model, example.to(device), frozen_params=untouchable):
        reason = family.frozen or ("has a single channel" if family.size < 2 else None)
        if reason is not None:
            layout.frozen[family.name] = reason
            continue
        layout.families[family.name] = _slice_family(family)
    if not layout.families:
        reasons = "; ".join(f"{n}: {r}" for n, r in layout.frozen.items()) or "no Linear or Conv2d layers"
        raise TicketlabError(f"No channel of this model can be removed safely ({reasons}); use "
                             "--granularity unstructured.")
    return layout


def _slice_family(family: ChannelFamily) -> SliceFamily:
    members = [Member(f"{p}.weight", 0, 0, 1) for p in family.producers]
    members += [Member(f"{c.module}.weight", 1, c.base, c.span) for c in family.consumers]
    shown = family.producers[0] + (f" and {len(family.producers) - 1} more (residual)" if len(family.producers) > 1
                                   else "")
    return SliceFamily(name=family.name, unit="channel", size=family.size, members=tuple(members),
                       producers=tuple(family.producers), consumers=tuple(c.module for c in family.consumers),
                       norms=tuple(family.norms), label=shown)


__all__ = ["block_layout", "channel_layout", "group_layout"]
