"""Perplexity of a causal LM over non-overlapping windows of a token stream.

The token stream is cut into ``len(ids) // seqlen`` consecutive windows of ``seqlen`` tokens (a
shorter remainder is dropped and reported). Each window is scored on its own, from an empty
context, as in the Wanda and SparseGPT evaluations: every token but the first of a window is
predicted from the tokens before it in that window. Perplexity is ``exp`` of the mean negative
log-likelihood over all predicted tokens (``windows * (seqlen - 1)`` of them). The result records
the window length, the model's context, the counts and the text's source, so two numbers can be
compared only when these agree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TicketlabError
from ..progress import Progress, Silent
from .adapters import context_length
from .io import model_device
from .text import TextPart, TextSource, resolve_seqlen, tokenize


@dataclass(frozen=True)
class PerplexityResult:
    """exp(mean token NLL) and everything needed to know what it was measured on."""

    perplexity: float
    mean_nll: float
    windows: int
    tokens: int  # predicted tokens: windows * (seqlen - 1)
    seqlen: int
    context_length: int | None
    dropped_tokens: int  # the remainder after the last full window
    source: str | None = None
    part: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"perplexity {self.perplexity:.3f} over {self.windows} windows of {self.seqlen} tokens "
                f"({self.tokens:,} predicted tokens; model context {self.context_length})")


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, *, seqlen: int, max_windows: int | None = None,
               batch_size: int = 1, source: str | None = None, part: str | None = None,
               progress: Progress | None = None) -> PerplexityResult:
    """Perplexity of ``model`` (returning ``.logits``) on the 1-D token ids ``ids`` in windows of ``seqlen``.

    ``max_windows`` keeps only the first windows (a quick estimate). Runs on the model's device.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if seqlen < 2:
        raise TicketlabError(f"--seqlen must be at least 2 tokens, not {seqlen}.")
    if max_windows is not None and max_windows < 1:
        raise TicketlabError(f"--max-windows must be at least 1, not {max_windows}.")
    n_windows = ids.numel() // seqlen
    if n_windows == 0:
        raise TicketlabError(f"The text has {ids.numel()} tokens, fewer than one window of {seqlen}; "
                             "give a longer text or a smaller --seqlen.")
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    windows = ids[:n_windows * seqlen].view(n_windows, seqlen)
    device = model_device(model)
    was_training = model.training
    model.eval()
    total_nll = 0.0
    starts = range(0, n_windows, batch_size)
    bar = progress("perplexity", len(starts), 0) if progress is not None else Silent()
    try:
        for start in starts:
            batch = windows[start:start + batch_size].to(device)
            logits = model(input_ids=batch).logits.float()  # (b, seqlen, vocab)
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                  reduction="sum")
            total_nll += float(nll)
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    tokens = n_windows * (seqlen - 1)
    mean = total_nll / tokens
    return PerplexityResult(perplexity=math.exp(mean), mean_nll=mean, windows=n_windows, tokens=tokens,
                            seqlen=seqlen, context_length=context_length(model),
                            dropped_tokens=int(ids.numel() - (ids.numel() // seqlen) * seqlen),
                            source=source, part=part)


def text_perplexity(model: nn.Module, tokenizer: Any, text: TextSource, *, seqlen: int | None = None,
                    part: TextPart = "heldout", max_windows: int | None = None, batch_size: int = 1,
                    progress: Progress | None = None) -> PerplexityResult:
    """Tokenise ``text`` (its ``part``) with ``tokenizer`` and measure `perplexity`.

    ``seqlen`` defaults to min(2048, model context) and may not exceed the context.
    """
    seqlen = resolve_seqlen(model, seqlen)
    ids = tokenize(tokenizer, text.part(part))
    return perplexity(model, ids, seqlen=seqlen, max_windows=max_windows, batch_size=batch_size,
                      source=text.describe(), part=part, progress=progress)
