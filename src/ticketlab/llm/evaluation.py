"""Before/after evaluation of a one-shot pruning run: perplexity of a causal LM on held-out text,
or for an encoder the cosine fidelity of its sentence embeddings to the dense model's."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..errors import TicketlabError

if TYPE_CHECKING:
    from .run import EvaluationConfig


class BeforeAfter:
    """Perplexity (causal LMs) or embedding fidelity to the dense model (encoders), before and after.

    ``before`` must run on the dense model (it keeps the encoder's reference embeddings), ``after``
    on the pruned one; without held-out ``text`` both do nothing.
    """

    def __init__(self, config: EvaluationConfig | None, loaded: Any, text: Any, seqlen: int, progress: Any = None):
        self.config, self.loaded, self.text, self.seqlen, self.progress = config, loaded, text, seqlen, progress
        self.record: dict[str, Any] = {}
        self.sentences: list[str] = []
        self.reference: torch.Tensor | None = None

    def _perplexity(self) -> Any:
        from .perplexity import text_perplexity

        return text_perplexity(self.loaded.model, self.loaded.tokenizer, self.text, seqlen=self.seqlen,
                               part=self.config.part, max_windows=self.config.max_windows, progress=self.progress)

    def before(self, say: Callable[[str], None]) -> None:
        from .fidelity import heldout_sentences, sentence_embeddings

        if self.text is None:
            return
        if self.loaded.kind == "causal":
            result = self._perplexity()
            self.record = {"metric": "perplexity", "before": result.to_json()}
            say(f"dense: {result.describe()}")
        else:
            self.sentences = heldout_sentences(self.text, self.config.part)
            self.reference = sentence_embeddings(self.loaded.model, self.loaded.tokenizer, self.sentences)
            self.record = {"metric": "embedding_fidelity", "reference": "the dense model",
                           "before": {"mean_cosine": 1.0, "min_cosine": 1.0, "sentences": len(self.sentences)}}

    def after(self) -> None:
        from .fidelity import embedding_fidelity

        if self.text is None:
            return
        if "before" not in self.record:
            raise TicketlabError("The pruned model was evaluated before the dense one; call before() first.")
        if self.loaded.kind == "causal":
            result = self._perplexity()
        else:
            result = embedding_fidelity(self.loaded.model, self.reference, self.loaded.tokenizer, self.sentences,
                                        source=self.text.describe(), part=self.config.part)
        self.record["after"] = result.to_json()


__all__ = ["BeforeAfter"]
