"""Fidelity of an encoder's sentence embeddings to a reference (dense) encoder.

Sentence embeddings follow the sentence-transformers recipe of all-MiniLM-L6-v2: the last hidden
states averaged over the real tokens (attention mask), then L2-normalised. Fidelity is the cosine
similarity between the pruned model's embedding and the reference's, per sentence; we report the
mean (1.0 = identical) and the minimum over the held-out sentences.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TicketlabError
from .adapters import context_length
from .io import model_device
from .text import TextPart, TextSource, split_sentences

#: all-MiniLM-L6-v2's max_seq_length in sentence-transformers; longer sentences are truncated.
DEFAULT_MAX_LENGTH = 256


@dataclass(frozen=True)
class FidelityResult:
    """Mean and minimum cosine similarity of sentence embeddings to the reference model's."""

    mean_cosine: float
    min_cosine: float
    sentences: int
    max_length: int
    source: str | None = None
    part: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"embedding fidelity {self.mean_cosine:.4f} mean cosine (min {self.min_cosine:.4f}) "
                f"over {self.sentences} sentences")


@torch.no_grad()
def sentence_embeddings(model: nn.Module, tokenizer: Any, sentences: list[str], *, batch_size: int = 32,
                        max_length: int | None = None) -> torch.Tensor:
    """(n, hidden) float32 embeddings: masked mean of the last hidden states, L2-normalised."""
    if not sentences:
        raise TicketlabError("No sentences to embed.")
    context = context_length(model)
    max_length = max_length or min(DEFAULT_MAX_LENGTH, context or DEFAULT_MAX_LENGTH)
    device = model_device(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(sentences), batch_size):
            enc = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            output = model(**enc)
            hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(F.normalize(pooled.float(), p=2, dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def embedding_fidelity(model: nn.Module, reference: nn.Module | torch.Tensor, tokenizer: Any,
                       sentences: list[str], *, batch_size: int = 32, max_length: int | None = None,
                       source: str | None = None, part: str | None = None) -> FidelityResult:
    """Cosine similarity of ``model``'s sentence embeddings to ``reference``'s (a model, or its
    precomputed embeddings of the same sentences)."""
    length = max_length or min(DEFAULT_MAX_LENGTH, context_length(model) or DEFAULT_MAX_LENGTH)
    ours = sentence_embeddings(model, tokenizer, sentences, batch_size=batch_size, max_length=length)
    if isinstance(reference, torch.Tensor):
        theirs = reference.float()
        if theirs.shape != ours.shape:
            raise TicketlabError(f"The reference embeddings have shape {tuple(theirs.shape)}, "
                                 f"not {tuple(ours.shape)}.")
    else:
        theirs = sentence_embeddings(reference, tokenizer, sentences, batch_size=batch_size, max_length=length)
    cos = (ours * theirs).sum(dim=1).clamp(-1.0, 1.0)
    return FidelityResult(mean_cosine=float(cos.mean()), min_cosine=float(cos.min()), sentences=len(sentences),
                          max_length=length, source=source, part=part)


def check_same_vocabulary(model: nn.Module, reference: nn.Module, model_dir: object, reference_dir: object) -> None:
    """Fidelity feeds both models the same token ids: their vocabularies and widths must match."""
    ours, theirs = getattr(model, "config", None), getattr(reference, "config", None)
    for field, what in (("vocab_size", "vocabulary"), ("hidden_size", "embedding width")):
        a, b = getattr(ours, field, None), getattr(theirs, field, None)
        if a != b:
            raise TicketlabError(
                f"The reference {str(reference_dir)!r} has a {what} of {b}, the model {str(model_dir)!r} one of {a}; "
                "give the dense model the pruned one came from as --reference."
            )


def heldout_sentences(text: TextSource, part: TextPart = "heldout", max_sentences: int | None = None) -> list[str]:
    """The sentences of ``text``'s ``part`` (default: the held-out tail never used for calibration)."""
    sentences = split_sentences(text.part(part))
    if max_sentences is not None:
        sentences = sentences[:max_sentences]
    if not sentences:
        raise TicketlabError(f"The {part} part of {text.source!r} holds no sentence of 3 words or more.")
    return sentences


def text_fidelity(model: nn.Module, reference: nn.Module, tokenizer: Any, text: TextSource, *,
                  part: TextPart = "heldout", max_sentences: int | None = None,
                  batch_size: int = 32) -> FidelityResult:
    """`embedding_fidelity` on the sentences of ``text``'s ``part``."""
    sentences = heldout_sentences(text, part, max_sentences)
    return embedding_fidelity(model, reference, tokenizer, sentences, batch_size=batch_size,
                              source=text.describe(), part=part)
