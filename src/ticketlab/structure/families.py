"""Model-family tables of Hugging Face transformers: where the repeated blocks live, and where a
block's attention heads and MLP channels live.

Families differ only in this table (one entry each, no per-family driver): the dotted path of the
``nn.ModuleList`` of blocks relative to the *base* model, optionally the default target modules,
and the attention and MLP layout (`AttentionTable`, `MlpTable`): which layers write a head or a
channel (rows), which layer reads it (columns), how a fused projection packs q, k and v, and which
module and config attributes count them. Head classes (``LlamaForCausalLM``,
``BertForSequenceClassification`` ...) wrap the base model under ``base_model_prefix``, so each
path is tried as given, under that prefix, and without its first component (``OPTModel`` has
``decoder.layers`` where ``OPTForCausalLM`` has ``model.decoder.layers``). An unknown family falls
back to generic discovery: the largest ``nn.ModuleList`` whose children are all of one class and
contain linear layers.

Used by one-shot pruning (`ticketlab.llm.adapters` chooses the target layers inside the blocks),
structured pruning (`ticketlab.structure.transformers` builds head and channel groups) and
compaction (`ticketlab.deploy.compact_hf` shrinks the layers and those attributes); a family
without an attention or MLP entry has its heads or channels frozen, never guessed. This module
imports nothing above it, so all three can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import TicketlabError
from ..targets import is_conv1d


#: How a fused q/k/v projection lays out its output rows (see `AttentionTable`).
PACKINGS: tuple[str, ...] = ("separate", "stacked", "interleaved")
#: The quantities a table may write into a module or config attribute after compaction.
QUANTITIES: tuple[str, ...] = ("heads", "kv_heads", "width")


@dataclass(frozen=True)
class AttentionTable:
    """Where one block's attention heads live; module names are relative to the block.

    * ``qkv`` — the layers writing the heads (their output rows): ``(q, k, v)``, or one fused layer;
    * ``packing`` — ``"separate"``: three layers, head ``h`` owns rows ``[h*d, (h+1)*d)`` of each;
      ``"stacked"``: one layer whose output is ``q | k | v`` (GPT-2's ``c_attn`` at offsets 0, E, 2E;
      Phi-3's ``qkv_proj`` at 0, Hq·d, (Hq+Hkv)·d); ``"interleaved"``: one layer whose output is,
      head after head, ``q_h | k_h | v_h`` (GPT-NeoX's ``query_key_value``, viewed as
      ``(..., heads, 3·d)`` and chunked);
    * ``out`` — the layer reading the heads (its input columns, ``d`` per query head);
    * ``module`` — the attention module; ``head_dim`` its attribute holding ``d``;
    * ``heads`` / ``kv_heads`` — config attributes of the query and key/value head counts
      (``kv_heads=None``: no grouped-query attention);
    * ``config_head_dim`` — the config attribute that carries ``d``; None where the modeling code
      derives ``d = hidden_size // heads`` (a model with fewer heads then has no config);
    * ``sets`` — module attributes ``(attr, quantity)`` to rewrite after compaction, a quantity being
      ``"heads"``, ``"kv_heads"`` or ``"width"`` (heads · d);
    * ``config_reads`` — config attributes ``(attr, quantity)`` the forward pass reads at run time
      through ``module.config`` (Phi-3 splits its fused output at ``config.num_attention_heads · d``).

    Under grouped-query attention a group is one key/value head with its
    ``heads // kv_heads`` query heads: those query heads read only it (``repeat_kv``).
    """

    qkv: tuple[str, ...]
    out: str
    module: str
    packing: str = "separate"
    head_dim: str = "head_dim"
    heads: str = "num_attention_heads"
    kv_heads: str | None = None
    config_head_dim: str | None = None
    sets: tuple[tuple[str, str], ...] = ()
    config_reads: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MlpTable:
    """Where one block's MLP channels live; module names are relative to the block.

    ``inputs`` write the channels (output rows: gate and up of a gated MLP, or fc1); a fused input
    of ``parts`` equal parts (Phi-3's ``gate_up_proj``: gate | up) owns one row in each part.
    ``output`` reads them (input columns). ``width`` is the config attribute of their count;
    ``module`` / ``sets`` the MLP module and its attributes ``(attr, "width")`` to rewrite."""

    inputs: tuple[str, ...]
    output: str
    width: str
    parts: int = 1
    module: str = ""
    sets: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Adapter:
    """Where one family keeps its blocks; ``default_targets=()`` means every linear layer in them.
    ``attention`` / ``mlp``: where a block's heads and channels live (None: not described, so
    structured pruning freezes them)."""

    blocks: str
    default_targets: tuple[str, ...] = ()
    attention: AttentionTable | None = None
    mlp: MlpTable | None = None


#: LLaMA-style attention: q/k/v/o projections, grouped-query heads, ``head_dim`` in the config.
_ROTARY = AttentionTable(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj",
                         "self_attn", kv_heads="num_key_value_heads", config_head_dim="head_dim")
_GATED = MlpTable(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "intermediate_size", module="mlp",
                  sets=(("intermediate_size", "width"),))
_PHI3_ATTENTION = AttentionTable(("self_attn.qkv_proj",), "self_attn.o_proj", "self_attn", packing="stacked",
                                 kv_heads="num_key_value_heads", config_head_dim="head_dim",
                                 sets=(("num_key_value_heads", "kv_heads"),),
                                 config_reads=(("num_attention_heads", "heads"),))
_PHI3_MLP = MlpTable(("mlp.gate_up_proj",), "mlp.down_proj", "intermediate_size", parts=2)
_OPT_ATTENTION = AttentionTable(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.out_proj",
                                "self_attn", sets=(("num_heads", "heads"),))
_GPT2_ATTENTION = AttentionTable(("attn.c_attn",), "attn.c_proj", "attn", packing="stacked", heads="n_head",
                                 sets=(("num_heads", "heads"), ("split_size", "width")))
_NEOX_ATTENTION = AttentionTable(("attention.query_key_value",), "attention.dense", "attention",
                                 packing="interleaved", head_dim="head_size")
_BERT_ATTENTION = AttentionTable(("attention.self.query", "attention.self.key", "attention.self.value"),
                                 "attention.output.dense", "attention.self", head_dim="attention_head_size",
                                 sets=(("num_attention_heads", "heads"), ("all_head_size", "width")))
_BERT_MLP = MlpTable(("intermediate.dense",), "output.dense", "intermediate_size")
_DISTILBERT_ATTENTION = AttentionTable(("attention.q_lin", "attention.k_lin", "attention.v_lin"), "attention.out_lin",
                                       "attention", head_dim="attention_head_size", heads="n_heads",
                                       sets=(("n_heads", "heads"),))

ADAPTERS: dict[str, Adapter] = {
    # decoder LMs with pre-norm blocks and rotary position embeddings passed as keyword arguments
    "llama": Adapter("model.layers", attention=_ROTARY, mlp=_GATED),
    "mistral": Adapter("model.layers", attention=_ROTARY, mlp=_GATED),
    "mixtral": Adapter("model.layers", attention=_ROTARY),      # MLP: a mixture of fused experts
    "qwen2": Adapter("model.layers", attention=_ROTARY, mlp=_GATED),
    "qwen3": Adapter("model.layers", attention=_ROTARY, mlp=_GATED),   # q_norm / k_norm act per head_dim
    "gemma": Adapter("model.layers", attention=_ROTARY, mlp=_GATED),
    "gemma2": Adapter("model.layers", attention=_ROTARY, mlp=_GATED),
    "phi3": Adapter("model.layers", attention=_PHI3_ATTENTION, mlp=_PHI3_MLP),
    "opt": Adapter("model.decoder.layers", attention=_OPT_ATTENTION, mlp=MlpTable(("fc1",), "fc2", "ffn_dim")),
    "gpt2": Adapter("transformer.h", attention=_GPT2_ATTENTION, mlp=MlpTable(("mlp.c_fc",), "mlp.c_proj", "n_inner")),
    "gpt_neox": Adapter("gpt_neox.layers", attention=_NEOX_ATTENTION,
                        mlp=MlpTable(("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h", "intermediate_size")),
    # encoders
    "bert": Adapter("encoder.layer", attention=_BERT_ATTENTION, mlp=_BERT_MLP),
    "roberta": Adapter("encoder.layer", attention=_BERT_ATTENTION, mlp=_BERT_MLP),
    "xlm-roberta": Adapter("encoder.layer", attention=_BERT_ATTENTION, mlp=_BERT_MLP),
    "electra": Adapter("encoder.layer", attention=_BERT_ATTENTION, mlp=_BERT_MLP),
    "distilbert": Adapter("transformer.layer", attention=_DISTILBERT_ATTENTION,
                          mlp=MlpTable(("ffn.lin1",), "ffn.lin2", "hidden_dim")),
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


def model_type(model: nn.Module) -> str | None:
    """``model.config.model_type`` (a Hugging Face model's family), or None for other models."""
    value = _model_type(model)
    return value if isinstance(value, str) and value else None


def find_adapter(model: nn.Module) -> Adapter | None:
    """The table entry of ``model``'s family, or None for a family the table does not know."""
    return ADAPTERS.get(model_type(model) or "")


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


__all__ = ["ADAPTERS", "Adapter", "AttentionTable", "MlpTable", "PACKINGS", "QUANTITIES", "context_length",
           "find_adapter", "find_blocks", "is_target_module", "model_type"]
