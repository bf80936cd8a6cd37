"""`evaluate_model`: ``ticketlab llm eval`` as a library call — the perplexity of a causal LM, or
the sentence-embedding fidelity of an encoder to its dense reference, on a text's part.

`ModelEvalConfig` is frozen and validated: every value a user can get wrong is refused in one
sentence before a model is loaded. The command line builds it from its flags and prints what
`evaluate_model` returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import validate
from ..devices import resolve_device
from ..errors import TicketlabError
from ..flags import setting
from ..progress import Progress
from .run import EVAL_PART_FLAG, EVAL_TEXT_FLAG, MAX_NSAMPLES, check_evaluation_settings


@dataclass(frozen=True)
class ModelEvalConfig:
    """What to evaluate: ``model`` (None: the embedded all-MiniLM-L6-v2) on ``text`` (None: the
    packaged English text), its ``part``; causal LMs in windows of ``seqlen`` tokens (None:
    min(2048, context)), at most ``max_windows``; encoders against ``reference`` (None: the
    embedded MiniLM) on at most ``max_sentences`` sentences; ``batch_size`` windows (or 32 ×
    sentences) per forward pass on ``device``."""

    model: str | None = setting(None, metavar="DIR",
                                help="Hugging Face model directory (default: the embedded all-MiniLM-L6-v2).")
    text: str | None = setting(None, **EVAL_TEXT_FLAG,
                               help="Evaluation text: a file or a directory of .txt files (default: the packaged "
                                    "English text).")
    part: str = setting("heldout", **EVAL_PART_FLAG,
                        help="Evaluate on the last 10% of the text (never used by train-tiny or prune's "
                             "calibration) or all of it.")
    seqlen: int | None = setting(None, type=int, help="Window length for perplexity [default: min(2048, model context)].")
    max_windows: int | None = setting(None, type=int, help="Use at most this many windows (a quick estimate).")
    reference: str | None = setting(None, metavar="DIR",
                                    help="Encoders: the dense model to compare embeddings with (default: the embedded "
                                         "all-MiniLM-L6-v2).")
    max_sentences: int | None = setting(None, type=int, help="Encoders: use at most this many sentences.")
    batch_size: int = setting(1, type=int, help="Windows (or sentences x32) per forward pass.")
    device: str = setting("cpu", help="cpu, cuda or cuda:N.")

    def __post_init__(self) -> None:
        for name in ("model", "text", "reference"):   # None is the default; an empty string is not
            if getattr(self, name) is not None:
                validate.text(getattr(self, name), f"--{name}")
        if self.reference is not None:
            check_reference_dir(self.reference)
        check_evaluation_settings(self.part, self.max_windows)
        for name in ("max_sentences", "batch_size"):
            if getattr(self, name) is not None:
                validate.integer(getattr(self, name), f"--{name.replace('_', '-')}", low=1, high=MAX_NSAMPLES)
        if self.seqlen is not None:
            validate.integer(self.seqlen, "--seqlen", low=2, high=1 << 20)
        resolve_device(self.device, allow_auto=False)


def _is_ticketlab_run(directory: Path) -> bool:
    """Whether ``directory``'s config.json is a ticketlab run's (``{"kind": ..., "config": {...}}``)."""
    try:
        record = json.loads((directory / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and "kind" in record and isinstance(record.get("config"), dict)


def check_reference_dir(path: str) -> Path:
    """``--reference`` as a Hugging Face model directory (the dense model an encoder is compared
    with); a missing path, a file or a ticketlab run directory is one sentence naming the flag."""
    from .io import check_model_dir

    directory = Path(path)
    if not directory.exists():
        raise TicketlabError(f"The --reference directory {path!r} does not exist.")
    if not directory.is_dir():
        raise TicketlabError(f"--reference {path!r} is a file; give the dense model's Hugging Face directory.")
    if _is_ticketlab_run(directory):
        raise TicketlabError(f"--reference {path!r} is a ticketlab run directory; give the dense model's Hugging "
                             "Face directory (the one that was pruned).")
    return check_model_dir(directory)


@dataclass(frozen=True)
class ModelEvaluation:
    """What `evaluate_model` measured: ``record`` (the JSON the command prints with --json: model,
    kind, metric and the measurement's fields), the text's description and the model's context
    length."""

    record: dict[str, Any]
    text: str
    context_length: int


def evaluate_model(config: ModelEvalConfig, progress: Progress | None = None,
                   threads: str | int = "auto") -> ModelEvaluation:
    """Load ``config.model`` and measure it (see `ModelEvalConfig`); torch threads from ``threads``
    (``auto``: from the model's size, `ticketlab.threads`)."""
    from ..threads import resolve_threads, token_step_macs, use_threads
    from . import context_length
    from .io import default_model_path, load_pretrained
    from .text import packaged_text, read_text

    resolve_threads(threads, 0.0)   # a bad --threads fails before the model loads
    text = read_text(config.text) if config.text else packaged_text()
    model_dir = Path(config.model) if config.model else default_model_path()
    loaded = load_pretrained(model_dir, device=config.device)
    if loaded.kind == "causal" and config.reference is not None:
        raise TicketlabError(f"--reference applies to encoders (their embeddings are compared with it); "
                             f"{str(model_dir)!r} is a causal LM, evaluated by its perplexity alone.")
    use_threads(threads, token_step_macs(loaded.model, _tokens_per_forward(config, loaded)))
    if loaded.kind == "causal":
        record = _perplexity_record(config, loaded, text, progress)
    else:
        record = _fidelity_record(config, loaded, text, model_dir)
    return ModelEvaluation(record={"model": str(model_dir), **record}, text=text.describe(),
                           context_length=context_length(loaded.model))


def _tokens_per_forward(config: ModelEvalConfig, loaded: Any) -> int:
    """The tokens of one forward pass, the size ``--threads auto`` goes by: for a causal LM
    ``batch_size`` windows of the length perplexity will use (`resolve_seqlen`: min(2048, context)
    when --seqlen is not given); for an encoder, whose sentences are short and padded per batch,
    ``batch_size`` x 128 (its --seqlen is refused later, in `_fidelity_record`)."""
    from .text import resolve_seqlen

    if loaded.kind == "causal":
        return config.batch_size * resolve_seqlen(loaded.model, config.seqlen)
    return config.batch_size * 128


def _perplexity_record(config: ModelEvalConfig, loaded: Any, text: Any, progress: Progress | None) -> dict[str, Any]:
    from .perplexity import text_perplexity

    result = text_perplexity(loaded.model, loaded.tokenizer, text, seqlen=config.seqlen, part=config.part,
                             max_windows=config.max_windows, batch_size=config.batch_size, progress=progress)
    return {"kind": "causal", "metric": "perplexity", **result.to_json()}


def _fidelity_record(config: ModelEvalConfig, loaded: Any, text: Any, model_dir: Path) -> dict[str, Any]:
    from .fidelity import check_same_vocabulary, text_fidelity
    from .io import default_model_path, load_pretrained

    if config.seqlen is not None:
        raise TicketlabError("--seqlen applies to causal LMs; an encoder is evaluated on whole sentences.")
    reference_dir = Path(config.reference) if config.reference else default_model_path()
    reference = load_pretrained(reference_dir, kind="encoder", device=config.device)
    check_same_vocabulary(loaded.model, reference.model, model_dir, reference_dir)
    result = text_fidelity(loaded.model, reference.model, loaded.tokenizer, text, part=config.part,
                           max_sentences=config.max_sentences, batch_size=32 * config.batch_size)
    return {"kind": "encoder", "metric": "embedding_fidelity", "reference": str(reference_dir), **result.to_json()}


__all__ = ["ModelEvalConfig", "ModelEvaluation", "check_reference_dir", "evaluate_model"]
