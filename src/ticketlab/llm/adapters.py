"""Which layers of a Hugging Face transformer one-shot pruning targets.

The family tables (where the blocks, heads and MLP channels live) are in
`ticketlab.structure.families`, below this package, and re-exported here; this module picks the
target linear layers inside the blocks (`find_targets`). The embedding and the output head are
outside the blocks, so they are never targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import TicketlabError
from ..structure.families import (ADAPTERS, PACKINGS, QUANTITIES, Adapter, AttentionTable, MlpTable, context_length,
                                  find_adapter, find_blocks, is_target_module, model_type)
from ..targets import is_conv1d, resolve_patterns


@dataclass(frozen=True)
class TargetLayer:
    """One layer to prune: its block, full module name and whether its weight is stored transposed."""

    block: int
    name: str            # full module name, e.g. "model.layers.3.mlp.down_proj"
    relative: str        # name inside its block, e.g. "mlp.down_proj"
    module: nn.Module
    transposed: bool     # True for GPT-2 Conv1D: weight is (in, out)

    @property
    def parameter(self) -> str:
        return f"{self.name}.weight"

    @property
    def in_features(self) -> int:
        w = self.module.weight
        return int(w.shape[0] if self.transposed else w.shape[1])


def _strip_weight(patterns: Sequence[str]) -> list[str]:
    return [p[: -len(".weight")] if p.endswith(".weight") and len(p) > len(".weight") else p for p in patterns]


def find_targets(model: nn.Module, blocks_path: str, blocks: nn.ModuleList,
                 targets: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[TargetLayer]:
    """The layers inside the blocks to prune, in block then module order.

    ``targets`` (default: the family's default targets, else every linear layer) and ``exclude``
    are exact module names, dotted suffixes or full-match regular expressions; a pattern matching
    no linear layer inside the blocks is a `TicketlabError`.
    """
    candidates: list[TargetLayer] = []
    for index, block in enumerate(blocks):
        for rel, module in block.named_modules():
            if rel and is_target_module(module):
                candidates.append(TargetLayer(index, f"{blocks_path}.{index}.{rel}", rel, module, is_conv1d(module)))
    if not candidates:
        raise TicketlabError(f"The blocks under {blocks_path!r} contain no linear layer to prune.")
    names = [c.name for c in candidates]
    if not targets:
        adapter = ADAPTERS.get(model_type(model) or "")
        targets = adapter.default_targets if adapter is not None else ()
    chosen = set(names)
    if targets:
        hits = resolve_patterns(_strip_weight(targets), names, what="target pattern")
        chosen = {n for found in hits.values() for n in found}
    if exclude:
        hits = resolve_patterns(_strip_weight(exclude), names, what="exclude pattern")
        chosen -= {n for found in hits.values() for n in found}
    if not chosen:
        raise TicketlabError("Every target layer is excluded, so there is nothing left to prune.")
    return [c for c in candidates if c.name in chosen]


__all__ = ["ADAPTERS", "Adapter", "AttentionTable", "MlpTable", "PACKINGS", "QUANTITIES", "TargetLayer",
           "context_length", "find_adapter", "find_blocks", "find_targets", "is_conv1d", "is_target_module",
           "model_type"]
