"""Structured sparsity of Hugging Face transformers: heads and MLP channels from the family table
against hand-written memberships, compaction equal to the masked model for every family and group
kind, reload with transformers alone where a config can describe the result (and the reason where
not), per-block widths, and frozen families named."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from ticketlab.deploy.compact_hf import compact_transformer
from ticketlab.errors import TicketlabError
from ticketlab.groups import BlockFamily
from ticketlab.llm.adapters import find_blocks, find_targets
from ticketlab.masks import Mask
from ticketlab.select import GroupTarget, select_groups
from ticketlab.structure.layouts import group_layout
from ticketlab.structure.transformers import transformer_layout

VOCAB = 64
T = transformers
#: Family -> (model class, config, Auto class that reloads it). 2 blocks, hidden 32, 4 heads; the
#: decoders with grouped-query attention have 2 key/value heads.
_GQA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
FAMILIES = {
    "llama": lambda: (T.LlamaForCausalLM, T.LlamaConfig(**_GQA), T.AutoModelForCausalLM),
    "mistral": lambda: (T.MistralForCausalLM, T.MistralConfig(**_GQA), T.AutoModelForCausalLM),
    "qwen2": lambda: (T.Qwen2ForCausalLM, T.Qwen2Config(**_GQA), T.AutoModelForCausalLM),
    "qwen3": lambda: (T.Qwen3ForCausalLM, T.Qwen3Config(head_dim=8, **_GQA), T.AutoModelForCausalLM),
    "phi3": lambda: (T.Phi3ForCausalLM, T.Phi3Config(**_GQA), T.AutoModelForCausalLM),
    "opt": lambda: (T.OPTForCausalLM, T.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                                  num_attention_heads=4, word_embed_proj_dim=32,
                                                  max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
                                                  pad_token_id=1), T.AutoModelForCausalLM),
    "gpt2": lambda: (T.GPT2LMHeadModel, T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                                     bos_token_id=0, eos_token_id=0), T.AutoModelForCausalLM),
    "gpt_neox": lambda: (T.GPTNeoXForCausalLM, T.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                               num_hidden_layers=2, num_attention_heads=4,
                                                               max_position_embeddings=32, bos_token_id=0,
                                                               eos_token_id=0), T.AutoModelForCausalLM),
    "bert": lambda: (T.BertModel, T.BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4,
                                               max_position_embeddings=32), T.AutoModel),
    "distilbert": lambda: (T.DistilBertModel, T.DistilBertConfig(vocab_size=VOCAB, dim=32, hidden_dim=64, n_layers=2,
                                                                 n_heads=4, max_position_embeddings=32), T.AutoModel),
}
#: Families whose modeling code derives head_dim = hidden_size // heads (no config field, and
#: config.pruned_heads is gone in transformers 5): fewer heads do not reload.
DERIVED_HEAD_DIM = {"opt", "gpt2", "gpt_neox", "bert", "distilbert"}
GQA = {"llama", "mistral", "qwen2", "qwen3", "phi3"}


def _model(family: str, seed: int = 0) -> nn.Module:
    cls, config, _ = FAMILIES[family]()
    torch.manual_seed(seed)
    return cls(config).eval()


def _names(model: nn.Module) -> list[str]:
    path, blocks = find_blocks(model)
    return [t.parameter for t in find_targets(model, path, blocks)]


def _mask(model: nn.Module, units: tuple[str, ...], keep, seed: int = 0, names: list[str] | None = None) -> Mask:
    """Random whole groups: family -> ``keep(family)`` groups kept, chosen by seeded random scores."""
    layout = transformer_layout(model, units, names or _names(model))
    counts = {f.name: keep(f) for f in layout}
    return select_groups({}, layout, GroupTarget(per_family=counts), aggregate="random",
                         generator=torch.Generator().manual_seed(seed))


def _half(family) -> int:
    return max(1, family.size // 2) if family.unit == "head" else family.size * 5 // 8


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def _out(model: nn.Module) -> torch.Tensor:
    return model(input_ids=_ids())[0]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _members(layout, name):
    return [(m.param.rsplit(".", 2)[-2], m.dim, m.base, m.span)
            for m in layout.families[name].members]


def _masked_and_compacted(family: str, units: tuple[str, ...], keep=_half, seed: int = 0):
    model = _model(family)
    mask = _mask(model, units, keep, seed)
    masked = copy.deepcopy(model)
    mask.apply_(masked)
    compacted, report = compact_transformer(model, mask)
    return model, masked, compacted, report


# --- (a) group membership against hand-written expectations -------------------------------------
# (layer, stored dim, base, span); hidden 32, 4 heads of width 8, MLP 64 (GPT-2: 4·32 = 128).
EXPECTED = {
    "llama": ("model.layers", [("q_proj", 0, 0, 16), ("k_proj", 0, 0, 8), ("v_proj", 0, 0, 8), ("o_proj", 1, 0, 16)],
              [("gate_proj", 0, 0, 1), ("up_proj", 0, 0, 1), ("down_proj", 1, 0, 1)], 2, 64),
    "phi3": ("model.layers", [("qkv_proj", 0, 0, 16), ("qkv_proj", 0, 32, 8), ("qkv_proj", 0, 48, 8),
                              ("o_proj", 1, 0, 16)],
             [("gate_up_proj", 0, 0, 1), ("gate_up_proj", 0, 64, 1), ("down_proj", 1, 0, 1)], 2, 64),
    "opt": ("model.decoder.layers", [("q_proj", 0, 0, 8), ("k_proj", 0, 0, 8), ("v_proj", 0, 0, 8),
                                     ("out_proj", 1, 0, 8)], [("fc1", 0, 0, 1), ("fc2", 1, 0, 1)], 4, 64),
    # Conv1D stores (in, out): c_attn's output rows are dim 1, q | k | v at 0, E, 2E
    "gpt2": ("transformer.h", [("c_attn", 1, 0, 8), ("c_attn", 1, 32, 8), ("c_attn", 1, 64, 8), ("c_proj", 0, 0, 8)],
             [("c_fc", 1, 0, 1), ("c_proj", 0, 0, 1)], 4, 128),
    # query_key_value is viewed as (..., heads, 3·d): head h owns rows [24h, 24h + 24) = q_h | k_h | v_h
    "gpt_neox": ("gpt_neox.layers", [("query_key_value", 0, 0, 24), ("dense", 1, 0, 8)],
                 [("dense_h_to_4h", 0, 0, 1), ("dense_4h_to_h", 1, 0, 1)], 4, 64),
    "bert": ("encoder.layer", [("query", 0, 0, 8), ("key", 0, 0, 8), ("value", 0, 0, 8), ("dense", 1, 0, 8)],
             [("dense", 0, 0, 1), ("dense", 1, 0, 1)], 4, 64),
    "distilbert": ("transformer.layer", [("q_lin", 0, 0, 8), ("k_lin", 0, 0, 8), ("v_lin", 0, 0, 8),
                                         ("out_lin", 1, 0, 8)], [("lin1", 0, 0, 1), ("lin2", 1, 0, 1)], 4, 64),
}


@pytest.mark.parametrize("family", list(EXPECTED))
def test_groups_are_the_rows_and_columns_the_table_names(family):
    blocks, attn, mlp, heads, width = EXPECTED[family]
    model = _model(family)
    layout = transformer_layout(model, ("head", "channel"), _names(model))
    assert list(layout.families) == [f"{blocks}.{i}.{k}" for i in (0, 1) for k in ("attn", "mlp")]
    assert not layout.frozen
    for i in (0, 1):
        assert _members(layout, f"{blocks}.{i}.attn") == attn and _members(layout, f"{blocks}.{i}.mlp") == mlp
        assert layout.families[f"{blocks}.{i}.attn"].size == heads
        assert layout.families[f"{blocks}.{i}.mlp"].size == width
        assert all(m.param.startswith(f"{blocks}.{i}.") for m in layout.families[f"{blocks}.{i}.attn"].members)


def test_bert_members_are_its_attention_and_mlp_layers():
    model = _model("bert")
    layout = transformer_layout(model, ("head", "channel"), _names(model))
    assert [m.param for m in layout.families["encoder.layer.1.attn"].members] == [
        "encoder.layer.1.attention.self.query.weight", "encoder.layer.1.attention.self.key.weight",
        "encoder.layer.1.attention.self.value.weight", "encoder.layer.1.attention.output.dense.weight"]
    assert [m.param for m in layout.families["encoder.layer.1.mlp"].members] == [
        "encoder.layer.1.intermediate.dense.weight", "encoder.layer.1.output.dense.weight"]


def test_a_masked_bias_joins_its_rows():
    model = _model("qwen2")          # q/k/v have biases
    names = _names(model) + ["model.layers.0.self_attn.k_proj.bias"]
    layout = transformer_layout(model, ("head",), names)
    members = [(m.param, m.dim, m.base, m.span) for m in layout.families["model.layers.0.attn"].members]
    assert ("model.layers.0.self_attn.k_proj.bias", 0, 0, 8) in members


def test_group_layout_dispatches_hugging_face_models():
    model = _model("llama")
    names = _names(model)
    for text, units in (("head", ("head",)), ("channel", ("channel",)), ("channel+head", ("head", "channel"))):
        assert list(group_layout(model, text, names).families) == list(transformer_layout(model, units, names).families)
    assert all(isinstance(f, BlockFamily) for f in group_layout(model, "block:4x4", names))
    assert group_layout(model, "unstructured", names) is None and group_layout(model, "2:4", names) is None


# --- (b) compaction equals the masked model ------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("units", [("head",), ("channel",), ("head", "channel")], ids=["head", "channel", "both"])
def test_compaction_computes_what_the_masked_model_computes(family, units):
    model, masked, compacted, report = _masked_and_compacted(family, units)
    assert not torch.equal(_out(masked), _out(model))                      # the mask matters
    assert _close(_out(masked), _out(compacted))
    assert _count(compacted) < _count(model) and report.removed > 0 and report.uniform
    kinds = {"head": "attn", "channel": "mlp"}
    shrunk = {n for n in report.widths_before if report.widths_after[n] < report.widths_before[n]}
    assert {n.rsplit(".", 1)[1] for n in shrunk} == {kinds[u] for u in units}
    n_rep = 2 if family in GQA else 1
    assert all(block["heads"] == n_rep * block["kv_heads"] for block in report.blocks)
    assert _count(model) == _count(_model(family))                           # the original is untouched


def test_gqa_keeps_a_multiple_of_the_query_heads_per_key_value_head():
    model, masked, compacted, report = _masked_and_compacted("llama", ("head",))
    assert report.blocks[0] == {"heads": 2, "kv_heads": 1, "head_dim": 8, "mlp_width": 64}
    attention = compacted.model.layers[0].self_attn
    assert attention.q_proj.out_features == 16 and attention.k_proj.out_features == 8
    assert attention.num_key_value_groups == 2 and attention.o_proj.in_features == 16


def test_phi3_reads_its_head_count_from_the_config_of_its_block():
    """Phi-3 splits its fused qkv at config.num_attention_heads · d: uniform blocks share the
    updated model config, blocks of different widths get one copy each."""
    _, _, uniform, _ = _masked_and_compacted("phi3", ("head",))
    assert all(layer.self_attn.config is uniform.config for layer in uniform.model.layers)
    assert uniform.config.num_attention_heads == 2

    def keep(f):
        return 1 if ".0." in f.name else f.size

    _, _, mixed, report = _masked_and_compacted("phi3", ("head",), keep)
    first, second = (layer.self_attn for layer in mixed.model.layers)
    assert first.config.num_attention_heads == 2 and first.num_key_value_heads == 1
    assert second.config is mixed.config and mixed.config.num_attention_heads == 4
    assert json.loads(json.dumps(report.to_json()))["blocks"][0]["heads"] == 2


def test_a_lone_query_head_under_gqa_stays():
    """Query head 0 alone pruned: its key/value head still serves head 1, so nothing goes."""
    model = _model("llama")
    names = _names(model)
    tensors = {n: torch.ones(dict(model.named_parameters())[n].shape, dtype=torch.bool) for n in names}
    tensors["model.layers.0.self_attn.q_proj.weight"][0:8] = False
    tensors["model.layers.0.self_attn.o_proj.weight"][:, 0:8] = False
    compacted, report = compact_transformer(model, Mask(tensors))
    assert report.removed == 0 and _count(compacted) == _count(model)


def test_a_family_pruned_entirely_keeps_one_zero_group():
    model = _model("llama")
    tensors = {n: torch.ones(dict(model.named_parameters())[n].shape, dtype=torch.bool) for n in _names(model)}
    for layer in ("gate_proj", "up_proj", "down_proj"):
        tensors[f"model.layers.0.mlp.{layer}.weight"][:] = False
    masked = copy.deepcopy(model)
    Mask(tensors).apply_(masked)
    compacted, report = compact_transformer(model, Mask(tensors))
    assert report.kept_dead == ["model.layers.0.mlp"] and report.blocks[0]["mlp_width"] == 1
    assert _close(_out(masked), _out(compacted))


def test_gpt2_conv1d_layers_shrink_along_their_stored_output_dim():
    _, masked, compacted, _ = _masked_and_compacted("gpt2", ("head", "channel"))
    block = compacted.transformer.h[0]
    assert tuple(block.attn.c_attn.weight.shape) == (32, 3 * 16) and block.attn.c_attn.nf == 48
    assert block.attn.split_size == 16 and tuple(block.attn.c_proj.weight.shape) == (16, 32)
    assert tuple(block.mlp.c_fc.weight.shape) == (32, 80) and tuple(block.mlp.c_proj.weight.shape) == (80, 32)


# --- (c) reload with transformers alone -----------------------------------------------------------
RELOADS = [(f, u) for f in FAMILIES for u in (("head", "channel"), ("channel",)) if f not in DERIVED_HEAD_DIM
           or u == ("channel",)]


@pytest.mark.parametrize("family, units", RELOADS, ids=[f"{f}-{'+'.join(u)}" for f, u in RELOADS])
def test_a_uniform_compaction_reloads_in_plain_transformers(family, units, tmp_path):
    _, masked, compacted, report = _masked_and_compacted(family, units)
    assert report.reloadable and report.config_changes, report.why_not_reloadable
    compacted.save_pretrained(tmp_path)
    auto = FAMILIES[family]()[2]
    reloaded = auto.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(compacted)
    assert _count(reloaded) == _count(compacted)
    assert _close(_out(masked), _out(reloaded))


@pytest.mark.parametrize("family", sorted(DERIVED_HEAD_DIM))
def test_fewer_heads_where_transformers_derives_head_dim_are_reported(family):
    """Transformers 5.25 computes head_dim = hidden_size // heads for these families and dropped
    config.pruned_heads, so no config describes the compacted heads: the report says so and the
    config is left as it was (the model itself still runs)."""
    model, masked, compacted, report = _masked_and_compacted(family, ("head",))
    assert not report.reloadable and "pruned_heads" in report.why_not_reloadable
    assert report.config_changes == {} and compacted.config.to_dict() == model.config.to_dict()
    assert _close(_out(masked), _out(compacted))


def test_a_head_count_the_llama_config_refuses_is_reported():
    """3 of 4 heads (no grouped-query attention): LlamaConfig requires hidden_size % heads == 0."""
    cls, config, _ = FAMILIES["llama"]()
    config.num_key_value_heads = 4
    torch.manual_seed(0)
    model = cls(config).eval()
    mask = _mask(model, ("head",), lambda f: 3)
    compacted, report = compact_transformer(model, mask)
    assert report.uniform and not report.reloadable and "not a multiple" in report.why_not_reloadable
    assert compacted.config.num_attention_heads == 4


# --- (d) blocks of different widths ---------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_non_uniform_widths_are_reported_per_block(family):
    def keep(f):   # block 0 loses half its groups, block 1 keeps all of its
        return _half(f) if ".0." in f.name else f.size

    model, masked, compacted, report = _masked_and_compacted(family, ("head", "channel"), keep)
    assert _close(_out(masked), _out(compacted))
    assert not report.uniform and not report.reloadable and "different widths" in report.why_not_reloadable
    first, second = report.blocks
    assert first["heads"] == second["heads"] // 2 and first["mlp_width"] < second["mlp_width"]
    assert report.config_changes == {} and compacted.config.to_dict() == model.config.to_dict()


# --- (e) frozen families --------------------------------------------------------------------------
def test_an_excluded_weight_freezes_its_family():
    model = _model("llama")
    names = [n for n in _names(model) if n != "model.layers.0.self_attn.o_proj.weight"]
    layout = transformer_layout(model, ("head", "channel"), names)
    assert "model.layers.0.self_attn.o_proj.weight" in layout.frozen["model.layers.0.attn"]
    assert "excluded" in layout.frozen["model.layers.0.attn"]
    assert set(layout.families) == {"model.layers.0.mlp", "model.layers.1.attn", "model.layers.1.mlp"}
    mask = _mask(model, ("head", "channel"), _half, names=names)
    _, report = compact_transformer(model, mask)
    assert "model.layers.0.attn" in report.untouched and report.blocks[0]["heads"] == 4


def test_a_family_the_table_does_not_describe_is_frozen_with_its_reason():
    config = T.MixtralConfig(num_local_experts=2, num_experts_per_tok=1, **_GQA)
    torch.manual_seed(0)
    model = T.MixtralForCausalLM(config).eval()
    layout = transformer_layout(model, ("head", "channel"), _names(model))
    assert set(layout.families) == {"model.layers.0.attn", "model.layers.1.attn"}
    assert "no MLP layout for model type 'mixtral'" in layout.frozen["model.layers.0.mlp"]


def test_an_unknown_family_is_never_guessed():
    config = T.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    model = T.BloomForCausalLM(config).eval()
    with pytest.raises(TicketlabError, match=r"transformer\.h\.0\.attn: ticketlab's table has no attention layout "
                                             r"for model type 'bloom'"):
        transformer_layout(model, ("head", "channel"), _names(model))
