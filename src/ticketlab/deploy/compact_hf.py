"""Compaction of Hugging Face transformers: physically remove the heads and MLP channels a mask prunes whole.

The groups are those of `ticketlab.structure.transformers` (the family table): a key/value group
of heads (its q/k/v rows and output columns) or an MLP channel (its gate/up or fc1 rows and biases
and its down or fc2 column). A group whose every weight is masked contributes exactly nothing —
its output columns are zero, whatever its biases — so deleting it leaves the network's function
unchanged (checked to 1e-5 relative in the tests). Per block the member layers (``nn.Linear`` and
GPT-2's ``Conv1D``) lose those rows, biases and columns, and the module attributes the forward pass
reads are rewritten from the table (``num_heads``, ``split_size``, ``all_head_size``,
``num_key_value_heads``; Phi-3, whose forward reads ``config.num_attention_heads``, gets its own
config copy per attention module). ``head_dim`` and ``num_key_value_groups`` never change: under
grouped-query attention a whole key/value group goes, so each block keeps a multiple of
``heads // kv_heads`` query heads.

Reloading with transformers alone (``save_pretrained`` + ``AutoModel*.from_pretrained``) needs one
config for every block. When every block keeps the same widths, the config is updated
(``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``intermediate_size`` / ``ffn_dim``
/ ``n_inner`` / ``hidden_dim``), provided the new config validates. It cannot describe:

* blocks of different widths (transformers 5.25 builds LLaMA, OPT, GPT-2, BERT ... blocks from the
  one global config): the report gives the per-block widths;
* fewer heads for OPT, GPT-2, GPT-NeoX, BERT / RoBERTa / ELECTRA and DistilBERT, whose modeling code
  derives the head width as ``hidden_size // num_heads`` (no ``head_dim`` field) and whose
  ``config.pruned_heads`` is gone in transformers 5; their MLP channels do reload;
* LLaMA and Gemma-2 head counts that do not divide ``hidden_size`` (their configs refuse them,
  though the modeling code would not mind).

The report says which case applies (``reloadable``, ``why_not_reloadable``). What every case can
do is ticketlab's ``compact`` export: it stores the original config, the compacted weights and the
report's ``kept_groups``, and `shrink_to_groups` rebuilds the smaller model from them (the
original config's skeleton, shrunk block by block by the same code that compacted it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError
from ..groups import SliceFamily
from ..structure.families import AttentionTable, MlpTable, find_adapter, model_type
from ..masks import Mask
from ..structure.transformers import BlockGroups, is_transformer, stored_dim, transformer_families
from ..targets import is_conv1d

UNITS: tuple[str, ...] = ("head", "channel")


@dataclass
class TransformerCompactionReport:
    """What `compact_transformer` removed and whether plain transformers can rebuild the result.

    ``widths_before`` / ``widths_after``: groups (key/value heads, MLP channels) of every prunable
    family; ``kept_groups``: the original indices of the groups each family kept; ``blocks``: per
    block the widths after (``heads``, ``kv_heads``, ``head_dim``, ``mlp_width``, where the table
    describes them); ``uniform``: every block has the same widths; ``config_changes``: the config
    attributes written; ``untouched``: frozen families and why; ``kept_dead``: families whose every
    group was pruned, of which one (all zero) is kept so that the shapes stay valid."""

    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    kept_groups: dict[str, list[int]] = field(default_factory=dict)
    blocks: list[dict[str, int]] = field(default_factory=list)
    uniform: bool = True
    config_changes: dict[str, int] = field(default_factory=dict)
    reloadable: bool = True
    why_not_reloadable: str = ""
    untouched: dict[str, str] = field(default_factory=dict)
    kept_dead: list[str] = field(default_factory=list)

    @property
    def removed(self) -> int:
        """Groups removed over all families."""
        return sum(self.widths_before[n] - self.widths_after[n] for n in self.widths_before)

    def to_json(self) -> dict[str, Any]:
        return {"widths_before": self.widths_before, "widths_after": self.widths_after,
                "kept_groups": self.kept_groups, "blocks": self.blocks, "uniform": self.uniform,
                "config_changes": self.config_changes, "reloadable": self.reloadable,
                "why_not_reloadable": self.why_not_reloadable, "not_compacted": self.untouched,
                "kept_dead": self.kept_dead}


def compact_transformer(model: nn.Module, mask: Mask, *, inplace: bool = False
                        ) -> tuple[nn.Module, TransformerCompactionReport]:
    """The compacted model (a copy unless ``inplace``) and its report (see the module docstring).

    ``mask`` covers the prunable weights (name -> bool, True = kept); it is applied first, so the
    result computes what the masked model computes. A group goes when every one of its weights is
    masked; frozen families (excluded layers, layouts the table does not know) stay whole."""
    if not is_transformer(model):
        raise TicketlabError("compact_transformer needs a Hugging Face model (one with config.model_type).")
    compacted = model if inplace else copy.deepcopy(model)
    mask.apply_(compacted)
    report = TransformerCompactionReport()
    entries = transformer_families(compacted, UNITS, list(mask))
    keeps: dict[str, torch.Tensor] = {}
    for entry in entries:
        if entry.family is None:
            report.untouched[entry.name] = entry.frozen or "frozen"
            continue
        keep = entry.family.alive(mask)
        if not bool(keep.any()):
            keep[0] = True
            report.kept_dead.append(entry.name)
        keeps[entry.name] = keep
    _apply_keeps(compacted, entries, keeps, report)
    return compacted, report


def shrink_to_groups(model: nn.Module, kept_groups: dict[str, list[int]], where: str
                     ) -> TransformerCompactionReport:
    """Shrink ``model`` (in place; its full-width skeleton, on any device including meta) to the
    groups a `TransformerCompactionReport` kept (``kept_groups``: family -> sorted original group
    indices), so that the compacted state dict loads into it; returns the report of that shrink.

    This is how `ticketlab.deploy.load` rebuilds a compacted export whose blocks keep different
    widths, which no transformers config can describe: the original config builds the skeleton and
    the same machinery as `compact_transformer` removes the groups the export removed (module
    attributes, per-module config copies, and the config itself when the widths are uniform).
    A family this model does not have, or indices outside it, is one sentence naming ``where``."""
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear) or is_conv1d(m)]
    entries = transformer_families(model, UNITS, names)
    families = {e.name: e.family for e in entries if e.family is not None}
    keeps = _keep_vectors(families, kept_groups, where)
    report = TransformerCompactionReport()
    _apply_keeps(model, entries, keeps, report)
    return report


def _keep_vectors(families: dict[str, SliceFamily], kept_groups: dict[str, list[int]], where: str
                  ) -> dict[str, torch.Tensor]:
    """Family -> ``(size,)`` bool of the groups ``kept_groups`` keeps; a family ``families`` does not
    hold, or indices that are not distinct, sorted and inside it, is one sentence naming ``where``."""
    keeps: dict[str, torch.Tensor] = {}
    for name, kept in kept_groups.items():
        family = families.get(name)
        if family is None:
            raise TicketlabError(f"{where} names the group family {name!r}, which this model does not have; it is "
                                 "damaged or was written for another model.")
        if not kept or list(kept) != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= family.size:
            raise TicketlabError(f"{where} keeps groups of {name!r} that are not distinct sorted indices below "
                                 f"{family.size}; it is damaged or crafted.")
        keep = torch.zeros(family.size, dtype=torch.bool)
        keep[torch.tensor(kept)] = True
        keeps[name] = keep
    return keeps


def _apply_keeps(model: nn.Module, entries: list[BlockGroups], keeps: dict[str, torch.Tensor],
                 report: TransformerCompactionReport) -> None:
    """Remove, in place, every group outside ``keeps`` (family -> ``(size,)`` bool) from its layers,
    then fill the report's widths, blocks and config changes (shared by compaction and rebuild)."""
    before = _block_widths(entries)
    with torch.no_grad():
        for entry in entries:
            if entry.name in keeps:
                _compact_entry(model, entry, keeps[entry.name], report)
    report.blocks = _block_widths(transformer_families(model, UNITS, []))
    report.uniform = all(b == report.blocks[0] for b in report.blocks)
    _update_config(model, before, report)
    if report.config_changes:      # the model's config now holds every block's widths: share it again
        for entry in entries:
            if isinstance(entry.table, AttentionTable) and entry.table.config_reads:
                model.get_submodule(entry.prefix + entry.table.module).config = model.config


def _block_widths(entries: list[BlockGroups]) -> list[dict[str, int]]:
    """Per block: ``heads``, ``kv_heads``, ``head_dim`` and ``mlp_width`` where the table knows them."""
    blocks: dict[int, dict[str, int]] = {}
    for entry in entries:
        widths = blocks.setdefault(entry.block, {})
        if entry.kind == "attn":
            widths.update(entry.widths)
        elif entry.widths:
            widths["mlp_width"] = entry.widths["width"]
    return [blocks[i] for i in sorted(blocks)]


def _compact_entry(model: nn.Module, entry: BlockGroups, keep: torch.Tensor,
                   report: TransformerCompactionReport) -> None:
    """Keep only the groups ``keep`` marks of one family (its layers and module attributes)."""
    family = entry.family
    assert family is not None
    report.widths_before[entry.name] = family.size
    report.widths_after[entry.name] = int(keep.sum())
    report.kept_groups[entry.name] = keep.nonzero().flatten().tolist()
    if bool(keep.all()):
        return
    for param, (dim, dropped) in _dropped(family).items():
        layer = model.get_submodule(param[: -len(".weight")])
        _shrink(layer, dim, dropped, keep)
    _rewrite_attributes(model, entry, keep)


def _dropped(family: SliceFamily) -> dict[str, tuple[int, list[tuple[int, int]]]]:
    """Weight parameter -> (stored dim, [(base, span) of each member on it]); biases follow their
    weight (`_shrink`), so their members are skipped."""
    out: dict[str, tuple[int, list[tuple[int, int]]]] = {}
    for member in family.members:
        if member.param.endswith(".weight"):
            out.setdefault(member.param, (member.dim, []))[1].append((member.base, member.span))
    return out


def _kept_index(extent: int, windows: list[tuple[int, int]], keep: torch.Tensor) -> torch.Tensor:
    """``(kept,)`` indices along a dim of ``extent`` entries: all but the dropped groups' windows."""
    alive = torch.ones(extent, dtype=torch.bool)
    for base, span in windows:
        factor = keep.repeat_interleave(span)
        alive[base: base + factor.numel()] &= factor
    return alive.nonzero().flatten()


def _shrink(layer: nn.Module, dim: int, windows: list[tuple[int, int]], keep: torch.Tensor) -> None:
    """Keep, in place, the entries of ``layer``'s stored weight along ``dim`` outside the dropped
    windows (and of its bias when ``dim`` holds its outputs); the size attributes follow."""
    weight = layer.weight
    index = _kept_index(weight.shape[dim], windows, keep).to(weight.device)
    layer.weight = nn.Parameter(weight.detach().index_select(dim, index).clone(), requires_grad=weight.requires_grad)
    if dim == stored_dim(layer, "out") and getattr(layer, "bias", None) is not None:
        bias = layer.bias
        layer.bias = nn.Parameter(bias.detach()[index].clone(), requires_grad=bias.requires_grad)
    if is_conv1d(layer):
        layer.nx, layer.nf = int(layer.weight.shape[0]), int(layer.weight.shape[1])
    else:
        layer.out_features, layer.in_features = int(layer.weight.shape[0]), int(layer.weight.shape[1])


def _quantities(entry: BlockGroups, kept: int) -> dict[str, int]:
    """The table's quantities after keeping ``kept`` groups of ``entry``."""
    if entry.kind == "mlp":
        return {"width": kept}
    w = entry.widths
    heads = kept * (w["heads"] // w["kv_heads"])
    return {"heads": heads, "kv_heads": kept, "width": heads * w["head_dim"]}


def _rewrite_attributes(model: nn.Module, entry: BlockGroups, keep: torch.Tensor) -> None:
    """Set the table's module attributes (``sets``) and, for ``config_reads``, those of a config
    copy of the module's own: the forward pass reads this block's widths from them."""
    table = entry.table
    reads = table.config_reads if isinstance(table, AttentionTable) else ()
    if not table.sets and not reads:                                                   # type: ignore[union-attr]
        return
    values = _quantities(entry, int(keep.sum()))
    module = model.get_submodule((entry.prefix + table.module).rstrip("."))            # type: ignore[union-attr]
    for attr, quantity in table.sets:                                                  # type: ignore[union-attr]
        setattr(module, attr, values[quantity])
    if reads:
        module.config = copy.copy(module.config)
        for attr, quantity in reads:
            setattr(module.config, attr, values[quantity])


def _config_changes(adapter_attention: AttentionTable | None, adapter_mlp: MlpTable | None,
                    before: dict[str, int], after: dict[str, int]) -> tuple[dict[str, int], str]:
    """Config attribute -> new value for uniform widths ``after`` (``before``: the original), or
    the reason the config cannot express them."""
    changes: dict[str, int] = {}
    if adapter_attention is not None and after.get("heads") != before.get("heads"):
        if adapter_attention.config_head_dim is None:
            return {}, ("transformers derives this family's head width as hidden_size // "
                        f"{adapter_attention.heads} and has no config.pruned_heads since version 5, so no config "
                        f"describes {after['heads']} heads of width {after['head_dim']}")
        changes[adapter_attention.heads] = after["heads"]
        if adapter_attention.kv_heads is not None:
            changes[adapter_attention.kv_heads] = after["kv_heads"]
        changes[adapter_attention.config_head_dim] = after["head_dim"]
    if adapter_mlp is not None and after.get("mlp_width") != before.get("mlp_width"):
        changes[adapter_mlp.width] = after["mlp_width"]
    return changes, ""


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:200].rstrip(".") if lines else type(err).__name__


def _update_config(model: nn.Module, before: list[dict[str, int]], report: TransformerCompactionReport) -> None:
    """Write uniform widths into ``model.config`` when a valid config can hold them; otherwise
    leave it as it was and say why the result does not reload in plain transformers."""
    if report.removed == 0:
        return
    if not report.uniform:
        report.reloadable = False
        report.why_not_reloadable = ("its blocks keep different widths, which one transformers config cannot "
                                     "describe; save it in ticketlab's compact format")
        return
    adapter = find_adapter(model)
    changes, reason = _config_changes(adapter.attention if adapter else None, adapter.mlp if adapter else None,
                                      before[0], report.blocks[0])
    if reason:
        report.reloadable, report.why_not_reloadable = False, reason
        return
    config = model.config
    candidate = copy.deepcopy(config)
    for attr, value in changes.items():
        setattr(candidate, attr, value)
    try:
        type(config).from_dict(candidate.to_dict())
    except Exception as err:   # noqa: BLE001 - a foreign validator; its message is the reason
        report.reloadable = False
        report.why_not_reloadable = f"the {model_type(model)} config refuses these widths ({_last_line(err)})"
        return
    for attr, value in changes.items():
        setattr(config, attr, value)
    report.config_changes = changes


def expand_to_groups(model: nn.Module, state: dict[str, torch.Tensor], kept_groups: dict[str, list[int]],
                     where: str = "The compaction record") -> dict[str, torch.Tensor]:
    """The full-width state dict of ``model`` (the original architecture) that a compacted
    ``state`` came from: every shrunk tensor scattered back at its kept groups' rows or columns,
    zeros at the removed ones — the masked model before compaction, exactly (``bench`` times it
    as the dense side, so both sides compute the same and greedy decoding gives the same tokens)."""
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear) or is_conv1d(m)]
    placements: dict[str, tuple[int, torch.Tensor]] = {}
    entries = transformer_families(model, UNITS, names)
    keeps = _keep_vectors({e.name: e.family for e in entries if e.family is not None}, kept_groups, where)
    for entry in entries:
        if entry.name not in keeps:
            continue
        keep = keeps[entry.name]
        for param, (dim, windows) in _dropped(entry.family).items():
            layer = model.get_submodule(param[: -len(".weight")])
            index = _kept_index(layer.weight.shape[dim], windows, keep)
            placements[param] = (dim, index)
            if dim == stored_dim(layer, "out") and getattr(layer, "bias", None) is not None:
                placements[param[: -len("weight")] + "bias"] = (0, index)
    out = {}
    for name, tensor in model.state_dict().items():
        if name in placements and name in state:
            dim, index = placements[name]
            if state[name].shape[dim] != index.numel():
                raise TicketlabError(f"{where} keeps {index.numel()} rows or columns of {name!r}, whose weights hold "
                                     f"{state[name].shape[dim]}; it is damaged or crafted.")
            out[name] = torch.zeros_like(tensor).index_copy_(dim, index, state[name].to(tensor.dtype))
        elif name in state:
            out[name] = state[name]
    return out


def transformer_macs(model: nn.Module, tokens: int) -> int:
    """Multiply-accumulates of one sequence of ``tokens`` tokens: every linear layer's weight once
    per token (``nn.Linear`` and GPT-2's ``Conv1D``, the LM head included, embeddings excluded),
    plus per block ``2 · tokens² · heads · head_dim`` for the attention scores and their weighted
    sum (the full square, as the eager and SDPA paths compute it on a CPU). Biases, norms and
    activations are left out, as in `ticketlab.flops`."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) or is_conv1d(m))
    blocks = _block_widths(transformer_families(model, ("head",), []))
    attention = sum(2 * tokens * tokens * b["heads"] * b["head_dim"] for b in blocks if "heads" in b)
    return linear * tokens + attention


__all__ = ["TransformerCompactionReport", "compact_transformer", "expand_to_groups", "shrink_to_groups",
           "transformer_macs"]
