"""``train-tiny``: a small GPT-style causal LM trained from scratch on a text file, on a CPU.

The text is split by the rule of `ticketlab.llm.text` (last 10% held out). A byte-level BPE
tokenizer is trained with the ``tokenizers`` library on the train part only, then a small LLaMA-style
(default) or GPT-2 model is trained on random windows of the train part with AdamW, linear warm-up
and cosine decay. At the end the held-out perplexity is measured with `perplexity` (the same code as
``ticketlab llm eval``) beside the perplexity of a unigram model fitted on the train part (the bar
a language model must clear). The output is a standard Hugging Face model directory (config,
safetensors weights, a ``PreTrainedTokenizerFast``) that plain transformers loads, plus
``train_tiny.json`` with the configuration and results. Everything random is seeded: the same text,
configuration and seed give the same weights.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal

import torch

from .. import validate
from ..errors import TicketlabError
from ..flags import setting
from ..progress import Progress, Silent
from ..threads import resolve_threads, token_step_macs, use_threads
from ..files import atomic_directory
from ..seeding import derive_seed
from .io import check_out_dir, save_pretrained
from .perplexity import PerplexityResult, perplexity
from .text import TextSource, split_holdout, tokenize

SPECIAL_TOKEN = "<|endoftext|>"
TinyArch = Literal["llama", "gpt2"]


@dataclass(frozen=True)
class TinyLMConfig:
    """Architecture and training recipe of the tiny LM (defaults: ~1.3M parameters, a few CPU minutes)."""

    arch: TinyArch = setting("llama", choices=lambda: ("llama", "gpt2"), help="Architecture.")
    layers: int = setting(4, type=int, help="Transformer blocks.")
    hidden: int = setting(128, type=int, help="Hidden size.")
    heads: int = setting(4, type=int, help="Attention heads.")
    intermediate: int | None = setting(None, type=int, help="MLP width [default: 3x hidden (llama), 4x (gpt2)].")
    context: int = setting(128, type=int, help="Context length (tokens).")
    vocab_size: int = setting(2048, type=int, help="Byte-level BPE vocabulary size.")
    steps: int = setting(600, type=int, help="Training steps.")
    batch_size: int = setting(16, type=int, help="Windows per training step.")
    lr: float = setting(3e-3, type=float, help="Peak learning rate (AdamW, warm-up then cosine decay).")
    min_lr_ratio: float = 0.1
    warmup: int = 60
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = setting(0, type=int, help="Seed of the initial weights and the window order.")

    def __post_init__(self) -> None:
        if self.arch not in ("llama", "gpt2"):
            raise TicketlabError(f"--arch must be llama or gpt2, not {self.arch!r}.")
        for name, high in (("layers", 256), ("hidden", 65536), ("heads", 1024), ("steps", 10**8),
                           ("batch_size", 1 << 16)):
            validate.integer(getattr(self, name), f"--{name.replace('_', '-')}", low=1, high=high)
        validate.integer(self.context, "--context (tokens per training window)", low=2, high=1 << 20)
        if self.hidden % self.heads:
            raise TicketlabError(f"--hidden {self.hidden} must be a multiple of --heads {self.heads}.")
        if self.intermediate is not None:
            validate.integer(self.intermediate, "--intermediate", low=1, high=1 << 20)
        if not isinstance(self.vocab_size, int) or not 258 <= self.vocab_size <= 65536:
            raise TicketlabError(f"--vocab-size must be between 258 and 65536, not {self.vocab_size}.")
        validate.learning_rate(self.lr, "--lr")   # AdamW's first step is 10x lr, in float32 weights
        validate.fraction(self.min_lr_ratio, "The minimum LR ratio", closed_low=True, closed_high=True)
        validate.integer(self.warmup, "The warm-up", low=0, high=10**8)
        validate.real(self.weight_decay, "The weight decay", low=0.0)
        validate.real(self.grad_clip, "The gradient clip", low=0.0, low_open=True)
        validate.seed(self.seed, "--seed")

    @property
    def ffn(self) -> int:
        return self.intermediate or (3 * self.hidden if self.arch == "llama" else 4 * self.hidden)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TinyLMResult:
    """What ``train-tiny`` produced and measured."""

    out: Path
    parameters: int
    train_tokens: int
    heldout_tokens: int
    final_train_loss: float
    validation: PerplexityResult
    unigram_perplexity: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "parameters": self.parameters, "train_tokens": self.train_tokens,
                "heldout_tokens": self.heldout_tokens, "final_train_loss": self.final_train_loss,
                "validation": self.validation.to_json(), "unigram_perplexity": self.unigram_perplexity,
                "seconds": self.seconds}


def train_bpe_tokenizer(text: str, vocab_size: int, context: int):
    """A byte-level BPE tokenizer trained on ``text``, wrapped as a standard ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=SPECIAL_TOKEN, eos_token=SPECIAL_TOKEN,
                                   unk_token=SPECIAL_TOKEN, pad_token=SPECIAL_TOKEN, model_max_length=context)


def build_tiny_model(config: TinyLMConfig, vocab_size: int, special_id: int) -> torch.nn.Module:
    """A freshly initialised LlamaForCausalLM or GPT2LMHeadModel (tied embeddings), from the global seed."""
    import transformers

    if config.arch == "llama":
        hf_config = transformers.LlamaConfig(
            vocab_size=vocab_size, hidden_size=config.hidden, intermediate_size=config.ffn,
            num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.heads,
            max_position_embeddings=config.context, tie_word_embeddings=True, bos_token_id=special_id,
            eos_token_id=special_id, pad_token_id=special_id)
        return transformers.LlamaForCausalLM(hf_config)
    hf_config = transformers.GPT2Config(
        vocab_size=vocab_size, n_embd=config.hidden, n_layer=config.layers, n_head=config.heads,
        n_inner=config.ffn, n_positions=config.context, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=special_id, eos_token_id=special_id, pad_token_id=special_id)
    return transformers.GPT2LMHeadModel(hf_config)


def unigram_perplexity(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of ``eval_ids`` under add-one-smoothed token frequencies of ``train_ids``."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-float(logp[eval_ids].mean()))


def _lr_at(step: int, config: TinyLMConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(1, config.steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_tiny_lm(text: TextSource, out: str | os.PathLike, config: TinyLMConfig = TinyLMConfig(), *,
                  threads: int | str | None = 1, progress: Progress | None = None,
                  log: Callable[[str], None] | None = None) -> TinyLMResult:
    """Train a tiny causal LM on ``text``'s train part and save it as a HF model directory at ``out``.

    ``threads`` fixes torch's intra-op threads while training (restored afterwards; None keeps the
    current setting; ``"auto"`` chooses from the model's size, `ticketlab.threads`, which gives 1 at
    the default size). One thread is the default: the model is too small to gain much from more, the
    result does not depend on the machine's core count, and on a shared machine it avoids
    oversubscription (measured on a busy 2-core machine: 0.26 s/step on 1 thread, 5 s on 2).
    ``log`` receives one line saying what is trained, once ``threads`` and ``out`` are checked (so
    a refused request prints nothing but its error).
    """
    if threads is not None:
        resolve_threads(threads, 0.0)   # a bad --threads fails before the tokenizer is trained
    check_out_dir(out)
    if log is not None:
        log(f"ticketlab llm train-tiny: {config.arch}, {config.layers} layers x {config.hidden}, "
            f"context {config.context}, {config.steps} steps, seed {config.seed}, on {text.describe()}")
    saved_threads = torch.get_num_threads()
    try:
        return _train(text, out, config, progress, threads)
    finally:
        torch.set_num_threads(saved_threads)


def _train(text: TextSource, out: str | os.PathLike, config: TinyLMConfig,
           progress: Progress | None, threads: int | str | None) -> TinyLMResult:
    started = time.perf_counter()
    train_text, heldout_text = split_holdout(text.text)
    tokenizer = train_bpe_tokenizer(train_text, config.vocab_size, config.context)
    train_ids, heldout_ids = tokenize(tokenizer, train_text), tokenize(tokenizer, heldout_text)
    if train_ids.numel() < config.context + 2:
        raise TicketlabError(f"The train part of {text.source!r} has {train_ids.numel()} tokens, fewer than "
                             f"one window of {config.context + 1}; give a longer text or a smaller --context.")
    if heldout_ids.numel() < config.context:
        raise TicketlabError(f"The held-out part of {text.source!r} has {heldout_ids.numel()} tokens, fewer "
                             f"than one window of {config.context}; give a longer text or a smaller --context.")
    special_id = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's global RNG
        torch.manual_seed(derive_seed(config.seed, "tiny-init"))
        model = build_tiny_model(config, len(tokenizer), special_id)
    parameters = sum(p.numel() for p in model.parameters())
    if threads is not None:
        use_threads(threads, token_step_macs(model, config.batch_size * config.context))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
    batches = torch.Generator().manual_seed(derive_seed(config.seed, "tiny-batches"))
    span = config.context + 1
    bar = progress("train-tiny", config.steps, 0) if progress is not None else Silent()
    model.train()
    recent: list[float] = []
    for step in range(config.steps):
        starts = torch.randint(0, train_ids.numel() - span + 1, (config.batch_size,), generator=batches)
        batch = torch.stack([train_ids[s:s + span] for s in starts.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        value = float(loss.detach())
        if not math.isfinite(value):  # never train on, or save, a model whose loss is not finite
            raise TicketlabError(f"Training diverged (the loss became {value}) at step {step}; lower --lr.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        recent = (recent + [value])[-50:]
        bar.update(1)
        if step % 10 == 0 and hasattr(bar, "set_postfix"):   # tqdm's: the running loss beside the bar
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    bar.close()
    model.eval()
    bad = next((n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise TicketlabError(f"Training left non-finite weights (in {bad!r}); lower --lr.")
    validation = perplexity(model, heldout_ids, seqlen=config.context, source=text.describe(), part="heldout")
    result = TinyLMResult(
        out=Path(out), parameters=parameters, train_tokens=int(train_ids.numel()),
        heldout_tokens=int(heldout_ids.numel()), final_train_loss=sum(recent) / len(recent),
        validation=validation, unigram_perplexity=unigram_perplexity(train_ids, heldout_ids, len(tokenizer)),
        seconds=time.perf_counter() - started)
    with atomic_directory(out) as tmp:
        save_pretrained(model, tokenizer, tmp)
        record = {"text": {"source": text.source, "sha256": text.sha256}, "config": config.to_json(),
                  "result": {k: v for k, v in result.to_json().items() if k != "out"}}
        (tmp / "train_tiny.json").write_text(json.dumps(record, indent=2) + "\n")
    return result
