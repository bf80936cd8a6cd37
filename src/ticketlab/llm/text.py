"""Calibration and evaluation text: reading files, the held-out split, and seeded token windows.

One rule splits every text the ``llm`` commands read: the last `HOLDOUT_FRACTION` (10%) of its
characters, cut at the next line break, is the **held-out** part and the rest the **train** part.
``train-tiny`` trains on the train part and validates on the held-out part; ``prune`` draws its
calibration windows from the train part (by default), and ``eval`` measures on the held-out part (by
default), so evaluating on the same file that calibrated a model never reuses calibration text.

Calibration windows are ``nsamples`` runs of ``seqlen`` consecutive tokens at offsets drawn from a
`torch.Generator` seeded with ``seed``: the same text, tokenizer and seed always give the same windows.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import TicketlabError
from .adapters import context_length

#: Share of a text (its tail, by characters, cut at a line break) held out from training and calibration.
HOLDOUT_FRACTION = 0.1
#: The default window length when the model's context allows it (never the full context of long models).
DEFAULT_SEQLEN = 2048
#: The calibration text that ships with ticketlab (composed English prose, ~30 KB).
PACKAGED_TEXT = Path(__file__).parent / "data" / "calibration_en.txt"

TextPart = Literal["all", "train", "heldout"]
TEXT_PARTS: tuple[str, ...] = ("all", "train", "heldout")


@dataclass(frozen=True)
class TextSource:
    """A text and where it came from: ``source`` (path or description) and the sha256 of its UTF-8 bytes."""

    text: str
    source: str
    sha256: str

    @classmethod
    def from_string(cls, text: str, source: str = "<string>") -> "TextSource":
        """Wrap an in-memory string (its hash is computed here)."""
        return cls(text=text, source=source, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())

    def describe(self) -> str:
        """``"path (sha256 0123456789ab, 12,345 chars)"``: enough to tell whether two numbers are comparable."""
        return f"{self.source} (sha256 {self.sha256[:12]}, {len(self.text):,} chars)"

    def part(self, part: TextPart) -> str:
        """The whole text, its train part or its held-out part (see `split_holdout`)."""
        if part not in TEXT_PARTS:
            raise TicketlabError(f"Text part must be one of {', '.join(TEXT_PARTS)}, not {part!r}.")
        if part == "all":
            return self.text
        train, heldout = split_holdout(self.text)
        return train if part == "train" else heldout


def read_text(path: str | os.PathLike) -> TextSource:
    """Read a UTF-8 text file, or every ``*.txt`` file of a directory (sorted by name, joined by blank lines)."""
    path = Path(path)
    if not path.exists():
        raise TicketlabError(f"Text file {str(path)!r} does not exist.")
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise TicketlabError(f"Directory {str(path)!r} holds no .txt files.")
    parts = []
    for file in files:
        try:
            parts.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise TicketlabError(f"Text file {str(file)!r} is not UTF-8 text.") from None
        except OSError as err:
            raise TicketlabError(f"Cannot read text file {str(file)!r} ({err.strerror}).") from None
    text = "\n\n".join(parts)
    if not text.strip():
        raise TicketlabError(f"Text {str(path)!r} is empty.")
    return TextSource.from_string(text, str(path))


def packaged_text() -> TextSource:
    """The English calibration text shipped with ticketlab (default for the embedded MiniLM)."""
    if not PACKAGED_TEXT.is_file():
        raise TicketlabError(f"The packaged calibration text {str(PACKAGED_TEXT)!r} is missing; reinstall ticketlab.")
    source = read_text(PACKAGED_TEXT)
    return TextSource(text=source.text, source="ticketlab:llm/data/calibration_en.txt", sha256=source.sha256)


def split_holdout(text: str, fraction: float = HOLDOUT_FRACTION) -> tuple[str, str]:
    """``(train, heldout)``: the held-out part is the last ``fraction`` of the characters, starting after
    the first line break at or past the cut point (at the cut point itself when there is none)."""
    if not 0.0 < fraction < 1.0:
        raise TicketlabError(f"The held-out fraction must be between 0 and 1, not {fraction}.")
    cut = int(len(text) * (1.0 - fraction))
    newline = text.find("\n", cut)
    if newline != -1 and newline + 1 < len(text):
        cut = newline + 1
    train, heldout = text[:cut], text[cut:]
    if not train.strip() or not heldout.strip():
        raise TicketlabError("The text is too short to split into a train part and a held-out part.")
    return train, heldout


def split_sentences(text: str, min_words: int = 3) -> list[str]:
    """Sentences of ``text``: paragraphs (separated by blank lines) with their lines joined, split after
    ``.``, ``!`` or ``?`` followed by whitespace; sentences shorter than ``min_words`` words are dropped."""
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        for sentence in re.split(r"(?<=[.!?])\s+", flat):
            if len(sentence.split()) >= min_words:
                sentences.append(sentence)
    return sentences


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids of ``text`` (1-D LongTensor) with the model's own tokenizer, without special tokens."""
    from .io import quiet_transformers

    with quiet_transformers():  # no "longer than the maximum sequence length" warning: we cut windows
        ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def resolve_seqlen(model: nn.Module, seqlen: int | None, *, default: int = DEFAULT_SEQLEN) -> int:
    """``seqlen`` checked against the model's context; None gives ``min(default, context)``."""
    context = context_length(model)
    if seqlen is None:
        return min(default, context) if context else default
    if seqlen < 2:
        raise TicketlabError(f"--seqlen must be at least 2 tokens, not {seqlen}.")
    if context is not None and seqlen > context:
        raise TicketlabError(f"--seqlen {seqlen} is longer than the model's context of {context} tokens.")
    return seqlen


@dataclass(frozen=True)
class CalibrationSet:
    """``nsamples`` token windows of ``seqlen`` tokens cut from a text, and how they were drawn."""

    input_ids: torch.Tensor  # (nsamples, seqlen), long
    offsets: tuple[int, ...]  # start of each window in the tokenised text part
    source: str
    sha256: str
    part: str
    seed: int
    text_tokens: int  # length of the tokenised text part the windows were cut from

    @property
    def nsamples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seqlen(self) -> int:
        return int(self.input_ids.shape[1])

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.sha256, "part": self.part, "nsamples": self.nsamples,
                "seqlen": self.seqlen, "seed": self.seed, "text_tokens": self.text_tokens}


def sample_windows(ids: torch.Tensor, nsamples: int, length: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``nsamples`` windows of ``length`` consecutive tokens of ``ids`` at random offsets (with replacement)."""
    if nsamples < 1:
        raise TicketlabError(f"--nsamples must be at least 1, not {nsamples}.")
    if ids.numel() < length:
        raise TicketlabError(
            f"The calibration text has {ids.numel()} tokens, fewer than one window of {length}; "
            "give a longer text or a smaller --seqlen."
        )
    starts = torch.randint(0, ids.numel() - length + 1, (nsamples,), generator=generator)
    windows = torch.stack([ids[s:s + length] for s in starts.tolist()])
    return windows, tuple(int(s) for s in starts)


def build_calibration(tokenizer: Any, text: TextSource, *, nsamples: int, seqlen: int, seed: int = 0,
                      part: TextPart = "train", wrap_special: bool = False) -> CalibrationSet:
    """Tokenise ``text`` (its ``part``) and cut ``nsamples`` seeded windows of ``seqlen`` tokens.

    With ``wrap_special`` (for encoders such as BERT) each window is ``[CLS] content [SEP]`` with
    ``seqlen - 2`` content tokens, the way the encoder sees every real input.
    """
    if seqlen < 2:
        raise TicketlabError(f"--seqlen must be at least 2 tokens, not {seqlen}.")
    body = text.part(part)
    if not body.strip():
        raise TicketlabError(f"The calibration text {text.source!r} is empty.")
    ids = tokenize(tokenizer, body)
    prefix: list[int] = []
    suffix: list[int] = []
    if wrap_special:
        cls_id, sep_id = getattr(tokenizer, "cls_token_id", None), getattr(tokenizer, "sep_token_id", None)
        if cls_id is not None and sep_id is not None:
            prefix, suffix = [cls_id], [sep_id]
    content = seqlen - len(prefix) - len(suffix)
    if content < 1:
        raise TicketlabError(f"--seqlen {seqlen} leaves no room for text between the special tokens.")
    generator = torch.Generator().manual_seed(seed)
    windows, offsets = sample_windows(ids, nsamples, content, generator)
    if prefix or suffix:
        n = windows.shape[0]
        windows = torch.cat([torch.tensor([prefix] * n, dtype=torch.long).view(n, -1), windows,
                             torch.tensor([suffix] * n, dtype=torch.long).view(n, -1)], dim=1)
    return CalibrationSet(input_ids=windows.contiguous(), offsets=offsets, source=text.source, sha256=text.sha256,
                          part=part, seed=seed, text_tokens=int(ids.numel()))
