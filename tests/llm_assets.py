"""Tiny Hugging Face assets for the llm tests, built here (no downloads): generated text, a
byte-level BPE tokenizer trained on it, LLaMA-style and BERT models from configs, and a session
fixture that saves them as model directories. Imported by test_llm_eval.py and test_llm_cli.py."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from conftest import missing_extra


def _transformers():
    """transformers, or a skip naming it: importing this module never needs it, so a test module
    that imports these helpers keeps its other tests when the [llm] extra is missing."""
    reason = missing_extra("transformers")
    if reason:
        pytest.skip(reason)
    import transformers

    return transformers


SYLLABLES = ["ka", "lo", "mi", "ten", "ra", "su", "vel", "do", "an", "pri", "or", "el", "tha", "ne", "bu"]


def generated_text(n_sentences: int = 400, seed: int = 0) -> str:
    """Sentences of made-up words (a small vocabulary with repeated structure), one paragraph per 5."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(120)]
    lines = []
    for i in range(n_sentences):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10)))
        lines.append(sentence.capitalize() + rng.choice([".", ".", "!", "?"]))
        if i % 5 == 4:
            lines.append("")
    return "\n".join(lines) + "\n"


def make_tokenizer(text: str, vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on ``text``, as a standard PreTrainedTokenizerFast."""
    transformers = _transformers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>", "[CLS]", "[SEP]", "[PAD]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(text.splitlines(), trainer=trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", bos_token="<eos>",
                                                cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]")


def make_llama(vocab_size: int, context: int = 64, seed: int = 0):
    transformers = _transformers()
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                      max_position_embeddings=context, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).eval()


def make_bert(vocab_size: int, context: int = 64, seed: int = 0):
    transformers = _transformers()
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=context,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                     initializer_range=0.3)
    return transformers.BertModel(config).eval()


@pytest.fixture(scope="session")
def llm_assets(tmp_path_factory) -> SimpleNamespace:
    """A text file, its tokenizer, and saved tiny LLaMA and BERT model directories."""
    _transformers()
    from ticketlab.llm.io import save_pretrained

    root = tmp_path_factory.mktemp("llm_assets")
    text = generated_text()
    text_path = root / "words.txt"
    text_path.write_text(text)
    tokenizer = make_tokenizer(text)
    llama_dir, bert_dir = root / "llama", root / "bert"
    save_pretrained(make_llama(len(tokenizer)), tokenizer, llama_dir)
    save_pretrained(make_bert(len(tokenizer)), tokenizer, bert_dir)
    return SimpleNamespace(root=root, text=text, text_path=text_path, tokenizer=tokenizer,
                           llama_dir=llama_dir, bert_dir=bert_dir)
