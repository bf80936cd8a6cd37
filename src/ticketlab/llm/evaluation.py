"""Before/after evaluation of a one-shot pruning run: perplexity of a causal LM on held-out text,
or for an encoder the cosine fidelity of its sentence embeddings to the dense model's."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .run import EvaluationConfig


class BeforeAfter:
    """Perplexity (causal LMs) or embedding fidelity to the dense model (encoders), before and after."""

    def __init__(self, config: EvaluationConfig | None, loaded: Any, text: Any, seqlen: int, device: torch.device,
                 bars: bool):
        self.config, self.loaded, self.text, self.seqlen, self.bars = config, loaded, text, seqlen, bars
        self.record: dict[str, Any] = {}
        self.sentences: list[str] = []
        self.reference: torch.Tensor | None = None

    def before(self, say: Callable[[str], None]) -> None:
        from .fidelity import heldout_sentences, sentence_embeddings
        from .perplexity import text_perplexity

        if self.text is None:
            return
        part = self.config.part
        if self.loaded.kind == "causal":
            result = text_perplexity(self.loaded.model, self.loaded.tokenizer, self.text, seqlen=self.seqlen, part=part,
                                     max_windows=self.config.max_windows, progress=self.bars)
            self.record = {"metric": "perplexity", "before": result.to_json()}
            say(f"dense: {result.describe()}")
        else:
            self.sentences = heldout_sentences(self.text, part)
            self.reference = sentence_embeddings(self.loaded.model, self.loaded.tokenizer, self.sentences)
            self.record = {"metric": "embedding_fidelity", "reference": "the dense model",
                           "before": {"mean_cosine": 1.0, "min_cosine": 1.0, "sentences": len(self.sentences)}}

    def after(self) -> None:
        from .fidelity import embedding_fidelity
        from .perplexity import text_perplexity

        if self.text is None:
            return
        part = self.config.part
        if self.loaded.kind == "causal":
            result = text_perplexity(self.loaded.model, self.loaded.tokenizer, self.text, seqlen=self.seqlen, part=part,
                                     max_windows=self.config.max_windows, progress=self.bars)
        else:
            result = embedding_fidelity(self.loaded.model, self.reference, self.loaded.tokenizer, self.sentences,
                                        source=self.text.describe(), part=part)
        self.record["after"] = result.to_json()


__all__ = ["BeforeAfter"]
