"""Attention heads and MLP channels of Hugging Face transformers, from the family table.

Per block ``i`` of the blocks at ``<blocks>`` (`ticketlab.structure.families.find_blocks`), the table
entry of the model's family (`ticketlab.structure.families.ADAPTERS`: `AttentionTable`, `MlpTable`)
gives two coupled families (`ticketlab.groups.SliceFamily`):

* ``<blocks>.<i>.attn`` (unit ``head``) — group ``g`` is key/value head ``g`` with the
  ``n_rep = heads // kv_heads`` query heads that read it (``n_rep = 1`` without grouped-query
  attention): q rows ``[g·n_rep·d, (g+1)·n_rep·d)``, k and v rows ``[g·d, (g+1)·d)``, and the output
  layer's columns at q's rows. A fused projection holds q, k and v at offsets (``stacked``: GPT-2,
  Phi-3) or head after head (``interleaved``: GPT-NeoX). Under grouped-query attention a single
  query head cannot go alone (its key/value head serves the others), so a whole group goes: every
  block keeps a multiple of ``n_rep`` query heads, ``n_rep`` per key/value head kept.
* ``<blocks>.<i>.mlp`` (unit ``channel``) — channel ``j``: row ``j`` of every input (gate and up of a
  gated MLP, or fc1; one row per part of a fused gate_up) and column ``j`` of the output layer.

Rows and columns are those of the *logical* weight ``(out, in)``: GPT-2's ``Conv1D`` stores
``(in, out)``, so its rows are dim 1 of the stored tensor. Only parameters of ``names`` (the mask's
prunable weights) become members; a writer's bias joins when the mask covers it. A family is
*frozen* — kept whole, with its reason in ``GroupLayout.frozen`` — when it needs a weight the mask
does not cover (the user excluded it), when the table does not describe that part of the family
(an unknown family found by generic discovery, Mixtral's experts), when a block's shapes do not
match the table, or when it has a single group. Nothing is guessed.

`transformer_families` is the one reader of the table: `transformer_layout` turns it into the
groups selection uses, and `ticketlab.deploy.compact_hf` into the layers it shrinks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from ..errors import TicketlabError
from ..groups import GroupLayout, Member, SliceFamily
from .families import AttentionTable, MlpTable, find_adapter, find_blocks, model_type
from ..targets import is_conv1d

#: The coupled units a transformer has, and the family kind each one prunes.
KINDS: dict[str, str] = {"head": "attn", "channel": "mlp"}


@dataclass(frozen=True)
class Slot:
    """One layer's share of a family: along ``axis`` (``"out"``: rows of the logical weight,
    ``"in"``: its columns), group ``g`` owns ``[base + g*span, base + (g+1)*span)``."""

    module: str      # relative to the block
    axis: str
    base: int
    span: int


@dataclass
class BlockGroups:
    """One family of one block: where it is, its widths, and its groups or why it is frozen.

    ``widths`` are read from the layers' shapes (attention: ``heads``, ``kv_heads``, ``head_dim``;
    MLP: ``width``), empty where the table does not describe the block; ``family`` is None exactly
    when ``frozen`` gives the reason."""

    name: str                   # "<blocks>.<i>.attn" or "<blocks>.<i>.mlp"
    block: int
    prefix: str                 # "<blocks>.<i>."
    kind: str                   # "attn" | "mlp"
    table: AttentionTable | MlpTable | None
    widths: dict[str, int] = field(default_factory=dict)
    family: SliceFamily | None = None
    frozen: str | None = None


def is_transformer(model: nn.Module) -> bool:
    """A Hugging Face model (it has ``config.model_type``), whose groups come from the table."""
    return model_type(model) is not None


def logical_shape(module: nn.Module) -> tuple[int, int]:
    """``(out, in)`` of a Linear or Conv1D layer, whatever the storage order."""
    rows, cols = (int(n) for n in module.weight.shape)
    return (cols, rows) if is_conv1d(module) else (rows, cols)


def stored_dim(module: nn.Module, axis: str) -> int:
    """The dim of the stored weight holding ``axis`` (``"out"`` / ``"in"``): Conv1D swaps them."""
    rows = 1 if is_conv1d(module) else 0
    return rows if axis == "out" else 1 - rows


def _layer(block: nn.Module, name: str) -> nn.Module | None:
    """The Linear / Conv1D layer ``name`` of ``block``, or None."""
    try:
        module = block.get_submodule(name)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Linear) or is_conv1d(module) else None


def _missing(block: nn.Module, names: Sequence[str]) -> str | None:
    """The first of ``names`` that is not a linear layer of ``block``."""
    return next((n for n in names if _layer(block, n) is None), None)


def attention_widths(block: nn.Module, table: AttentionTable) -> dict[str, int] | str:
    """``{"heads", "kv_heads", "head_dim"}`` of one block, from its layers' shapes (a compacted
    block has its own), or the reason they do not fit the table's packing."""
    missing = _missing(block, table.qkv + (table.out,))
    if missing is not None:
        return f"has no linear layer {missing!r} (the table's attention layout does not match this model)"
    try:
        d = int(getattr(block.get_submodule(table.module), table.head_dim))
    except (AttributeError, TypeError, ValueError):
        return f"has no head width {table.module}.{table.head_dim} (the table's attention layout does not match)"
    writers = [logical_shape(_layer(block, n))[0] for n in table.qkv]   # type: ignore[arg-type]
    q_width = logical_shape(_layer(block, table.out))[1]                # type: ignore[arg-type]
    heads = q_width // d if d > 0 else 0
    if table.packing == "separate" and len(writers) == 3:
        kv, fits = writers[1] // max(d, 1), writers[0] == q_width and writers[1] == writers[2]
    elif table.packing == "stacked" and len(writers) == 1:
        kv = (writers[0] - q_width) // max(2 * d, 1)
        fits = writers[0] == q_width + 2 * kv * d
    elif table.packing == "interleaved" and len(writers) == 1:
        kv, fits = heads, writers[0] == 3 * q_width
    else:
        return f"has a {table.packing!r} attention the table cannot lay out"
    if not (d > 0 and heads * d == q_width and kv > 0 and heads % kv == 0 and fits):
        return f"has attention shapes that do not match the table's {table.packing} layout"
    return {"heads": heads, "kv_heads": kv, "head_dim": d}


def mlp_widths(block: nn.Module, table: MlpTable) -> dict[str, int] | str:
    """``{"width"}``: the MLP channels of one block, or the reason the shapes do not fit the table."""
    missing = _missing(block, table.inputs + (table.output,))
    if missing is not None:
        return f"has no linear layer {missing!r} (the table's MLP layout does not match this model)"
    width = logical_shape(_layer(block, table.output))[1]                # type: ignore[arg-type]
    if any(logical_shape(_layer(block, n))[0] != table.parts * width for n in table.inputs):  # type: ignore[arg-type]
        return "has MLP shapes that do not match the table's layout"
    return {"width": width}


def attention_slots(table: AttentionTable, widths: dict[str, int]) -> list[Slot]:
    """The slots of one key/value group (see the module docstring): ``n_rep·d`` q rows and o
    columns, ``d`` k and v rows, at the offsets of the table's packing."""
    heads, kv, d = widths["heads"], widths["kv_heads"], widths["head_dim"]
    q_span = heads // kv * d
    if table.packing == "separate":
        q, k, v = table.qkv
        slots = [Slot(q, "out", 0, q_span), Slot(k, "out", 0, d), Slot(v, "out", 0, d)]
    elif table.packing == "stacked":
        fused = table.qkv[0]
        slots = [Slot(fused, "out", 0, q_span), Slot(fused, "out", heads * d, d),
                 Slot(fused, "out", heads * d + kv * d, d)]
    else:   # interleaved: head h owns rows [3hd, 3(h+1)d) = q_h | k_h | v_h
        slots = [Slot(table.qkv[0], "out", 0, 3 * d)]
    return slots + [Slot(table.out, "in", 0, q_span)]


def mlp_slots(table: MlpTable, widths: dict[str, int]) -> list[Slot]:
    """Row ``j`` of each input (of each of its parts) and column ``j`` of the output."""
    width = widths["width"]
    slots = [Slot(n, "out", part * width, 1) for n in table.inputs for part in range(table.parts)]
    return slots + [Slot(table.output, "in", 0, 1)]


def _members(block: nn.Module, prefix: str, slots: list[Slot], names: set[str]) -> tuple[Member, ...] | str:
    """The slots as members over the mask's parameters, or why the family must stay whole."""
    members = []
    for slot in slots:
        module = _layer(block, slot.module)
        weight = f"{prefix}{slot.module}.weight"
        if weight not in names:
            return f"needs {weight!r}, which is not a pruning target (excluded)"
        members.append(Member(weight, stored_dim(module, slot.axis), slot.base, slot.span))   # type: ignore[arg-type]
        if slot.axis == "out" and f"{prefix}{slot.module}.bias" in names:
            members.append(Member(f"{prefix}{slot.module}.bias", 0, slot.base, slot.span))
    return tuple(members)


def _block_groups(block: nn.Module, index: int, blocks_path: str, kind: str,
                  adapter_table: AttentionTable | MlpTable | None, kind_of_model: str | None,
                  names: set[str]) -> BlockGroups:
    """One block's family of ``kind`` (``"attn"`` / ``"mlp"``), frozen with a reason where needed."""
    prefix = f"{blocks_path}.{index}."
    entry = BlockGroups(name=f"{blocks_path}.{index}.{kind}", block=index, prefix=prefix, kind=kind,
                        table=adapter_table)
    what = "attention" if kind == "attn" else "MLP"
    if adapter_table is None:
        entry.frozen = f"ticketlab's table has no {what} layout for model type {kind_of_model!r}"
        return entry
    widths = attention_widths(block, adapter_table) if kind == "attn" else mlp_widths(block, adapter_table)
    if isinstance(widths, str):
        entry.frozen = widths
        return entry
    entry.widths = widths
    size = widths["kv_heads"] if kind == "attn" else widths["width"]
    slots = attention_slots(adapter_table, widths) if kind == "attn" else mlp_slots(adapter_table, widths)
    members = _members(block, prefix, slots, names)
    if isinstance(members, str):
        entry.frozen = members
    elif size < 2:
        entry.frozen = "has a single key/value head" if kind == "attn" else "has a single channel"
    else:
        entry.family = SliceFamily(name=entry.name, unit="head" if kind == "attn" else "channel", size=size,
                                   members=members, producers=tuple(prefix + s.module for s in slots[:-1]),
                                   consumers=(prefix + slots[-1].module,), label=_label(entry, prefix))
    return entry


def _label(entry: BlockGroups, prefix: str) -> str:
    table = entry.table
    if entry.kind == "mlp":
        return f"{entry.widths['width']} MLP channels of {prefix}{table.output}"   # type: ignore[union-attr]
    w = entry.widths
    shown = f"{w['heads']} heads of {prefix}{table.module}"                         # type: ignore[union-attr]
    return shown if w["heads"] == w["kv_heads"] else f"{shown} in {w['kv_heads']} key/value groups"


def transformer_families(model: nn.Module, units: Sequence[str], names: Sequence[str]) -> list[BlockGroups]:
    """Every block's families of ``units`` (``"head"``, ``"channel"``), block by block, attention
    first; frozen ones carry their reason. ``names``: the parameters that may be members."""
    unknown = [u for u in units if u not in KINDS]
    if unknown:
        raise TicketlabError(f"Transformers have head and channel groups, not {unknown[0]!r}.")
    blocks_path, blocks = find_blocks(model)
    adapter = find_adapter(model)
    kinds = [KINDS[u] for u in ("head", "channel") if u in units]
    tables = {"attn": adapter.attention if adapter else None, "mlp": adapter.mlp if adapter else None}
    chosen = set(names)
    return [_block_groups(block, i, blocks_path, kind, tables[kind], model_type(model), chosen)
            for i, block in enumerate(blocks) for kind in kinds]


def transformer_layout(model: nn.Module, units: tuple[str, ...], names: Sequence[str]) -> GroupLayout:
    """The `GroupLayout` of a Hugging Face model's heads and / or MLP channels (``units``) over the
    prunable parameters ``names`` (the mask's, in order); see the module docstring. A model none of
    whose families can be pruned is one sentence giving the first reasons."""
    params = dict(model.named_parameters())
    layout = GroupLayout({n: tuple(params[n].shape) for n in names})
    for entry in transformer_families(model, units, names):
        if entry.family is None:
            layout.frozen[entry.name] = entry.frozen or "frozen"
        else:
            layout.families[entry.name] = entry.family
    if not layout.families:
        reasons = list(layout.frozen.items())
        shown = "; ".join(f"{n}: {r}" for n, r in reasons[:2])
        shown += f"; and {len(reasons) - 2} more" if len(reasons) > 2 else ""
        raise TicketlabError(f"No {' or '.join(units)} of this model can be removed safely ({shown}); use "
                             "--granularity unstructured.")
    return layout


__all__ = ["BlockGroups", "KINDS", "Slot", "attention_slots", "attention_widths", "is_transformer",
           "logical_shape", "mlp_slots", "mlp_widths", "stored_dim", "transformer_families", "transformer_layout"]
