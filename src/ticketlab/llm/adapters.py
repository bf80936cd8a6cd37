"""Model-family adapters: where a transformer's repeated blocks live, and which layers to prune.

Families differ only in this table (one entry each, no per-family driver): the dotted path of the
``nn.ModuleList`` of blocks relative to the *base* model, and optionally the default target
modules. Head classes (``LlamaForCausalLM``, ``BertForSequenceClassification`` ...) wrap the base
model under ``base_model_prefix``, so each path is tried as given, under that prefix, and without
its first component (``OPTModel`` has ``decoder.layers`` where ``OPTForCausalLM`` has
``model.decoder.layers``). An unknown family falls back to generic discovery: the largest
``nn.ModuleList`` whose children are all of one class and contain linear layers.

The embedding and the output head are outside the blocks, so they are never targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import TicketlabError
from ..targets import is_conv1d, resolve_patterns


@dataclass(frozen=True)
class Adapter:
    """Where one family keeps its blocks; ``default_targets=()`` means every linear layer in them."""

    blocks: str
    default_targets: tuple[str, ...] = ()


ADAPTERS: dict[str, Adapter] = {
    # decoder LMs with pre-norm blocks and rotary position embeddings passed as keyword arguments
    "llama": Adapter("model.layers"),
    "mistral": Adapter("model.layers"),
    "mixtral": Adapter("model.layers"),
    "qwen2": Adapter("model.layers"),
    "qwen3": Adapter("model.layers"),
    "gemma": Adapter("model.layers"),
    "gemma2": Adapter("model.layers"),
    "phi3": Adapter("model.layers"),
    "opt": Adapter("model.decoder.layers"),
    "gpt2": Adapter("transformer.h"),
    "gpt_neox": Adapter("gpt_neox.layers"),
    # encoders
    "bert": Adapter("encoder.layer"),
    "roberta": Adapter("encoder.layer"),
    "xlm-roberta": Adapter("encoder.layer"),
    "electra": Adapter("encoder.layer"),
    "distilbert": Adapter("transformer.layer"),
}


def _get(model: nn.Module, path: str) -> nn.Module | None:
    module: nn.Module | None = model
    for part in path.split("."):
        module = getattr(module, part, None) if module is not None else None
        if not isinstance(module, nn.Module):
            return None
    return module


def is_target_module(module: nn.Module) -> bool:
    """``nn.Linear`` or Hugging Face's GPT-2 ``Conv1D`` (a linear layer with a transposed weight)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _candidate_paths(model: nn.Module, path: str) -> list[str]:
    out = [path]
    prefix = getattr(model, "base_model_prefix", "")
    if prefix:
        out.append(f"{prefix}.{path}")
    if "." in path:
        out.append(path.split(".", 1)[1])
    return out


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def _discover(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The largest ModuleList of same-class children that contain a linear layer."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1:
            continue
        if not any(is_target_module(m) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    return (best[1], best[2]) if best else None


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Dotted path and the ``nn.ModuleList`` of the model's repeated transformer blocks.

    Looks up ``model.config.model_type`` in `ADAPTERS`; an unknown family (or a known one whose
    path is missing) falls back to generic discovery; failing both is a `TicketlabError`.
    """
    model_type = _model_type(model)
    adapter = ADAPTERS.get(model_type or "")
    if adapter is not None:
        for path in _candidate_paths(model, adapter.blocks):
            module = _get(model, path)
            if isinstance(module, nn.ModuleList) and len(module) > 0:
                return path, module
    found = _discover(model)
    if found is None:
        raise TicketlabError(
            f"Cannot find the repeated transformer blocks of this {model_type or type(model).__name__} model "
            f"(no list of identical blocks containing linear layers), so it cannot be pruned layer by layer."
        )
    return found


def context_length(model: nn.Module) -> int | None:
    """Maximum number of positions the model accepts, from its config (None when it does not say)."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


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
        adapter = ADAPTERS.get(_model_type(model) or "")
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


__all__ = ["ADAPTERS", "Adapter", "TargetLayer", "context_length", "find_blocks", "find_targets",
           "is_conv1d", "is_target_module"]
