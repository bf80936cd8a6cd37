"""What a pruning decision removes at once: the granularity, one vocabulary for every method.

* ``unstructured`` — single weights (the default; what every method scores);
* ``N:M`` (e.g. ``2:4``) — ``N`` of every ``M`` consecutive weights along a row's inputs;
* ``block:RxC`` (e.g. ``block:4x4``, ``block:1x8``) — ``R x C`` tiles of a layer's weight seen as
  a matrix (rows = outputs, columns = everything else flattened);
* ``channel`` — an output unit of a layer (a conv filter, a Linear neuron, an MLP channel of a
  transformer) *with everything coupled to it*: its row in every layer that writes it (all
  members of a residual addition), its BatchNorm entries and bias, and its columns in every layer
  that reads it (`ticketlab.structure.graph`);
* ``head`` — an attention head of a transformer (its q/k/v rows and o columns; under grouped-query
  attention a key/value head with its query heads);
* ``channel+head`` — both (one-shot pruning of transformers).

``channel`` and ``head`` groups span several layers and are removed physically by compaction;
``N:M`` and blocks stay inside a layer and need a sparse kernel to pay off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TicketlabError
from ..select import NMPattern

#: The coupled (multi-layer) group kinds, in the order their names are written.
UNITS: tuple[str, ...] = ("channel", "head")
#: The most weights one block tile may hold (a typo guard: 64x64 is already coarse).
MAX_BLOCK_WEIGHTS = 1 << 16
_BLOCK = re.compile(r"^block:([0-9]+)x([0-9]+)$", re.ASCII)
_NM = re.compile(r"^([0-9]+):([0-9]+)$", re.ASCII)
HELP = ("What one pruning decision removes: unstructured (single weights), N:M (e.g. 2:4), block:RxC (tiles, "
        "e.g. block:4x4), channel (a unit with its coupled rows, columns, biases and BatchNorm entries: removed "
        "physically on export), head (attention heads), channel+head.")


@dataclass(frozen=True)
class Granularity:
    """One granularity (see the module docstring). ``units`` names the coupled kinds for
    ``channel`` / ``head`` / ``channel+head``; ``n, m`` the N:M pattern; ``rows, cols`` a block."""

    kind: str = "unstructured"        # unstructured | nm | block | groups
    n: int = 0
    m: int = 0
    rows: int = 0
    cols: int = 0
    units: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "nm":
            NMPattern(self.n, self.m)
        elif self.kind == "block":
            if not (self.rows >= 1 and self.cols >= 1 and self.rows * self.cols > 1):
                raise TicketlabError(f"A block needs at least two weights (got {self.rows}x{self.cols}); "
                                     "block:1x1 is unstructured.")
            if self.rows * self.cols > MAX_BLOCK_WEIGHTS:
                raise TicketlabError(f"A block of {self.rows}x{self.cols} weights is beyond the limit of "
                                     f"{MAX_BLOCK_WEIGHTS:,} weights.")
        elif self.kind == "groups":
            if not self.units or any(u not in UNITS for u in self.units) or len(set(self.units)) != len(self.units):
                raise TicketlabError(f"Coupled groups are {' or '.join(UNITS)} (got {self.units!r}).")
            object.__setattr__(self, "units", tuple(u for u in UNITS if u in self.units))
        elif self.kind != "unstructured":
            raise TicketlabError(f"Unknown granularity kind {self.kind!r}.")

    @classmethod
    def parse(cls, text: "str | Granularity | None") -> "Granularity":
        """``unstructured``, ``2:4``, ``block:4x4``, ``channel``, ``head`` or ``channel+head``."""
        if isinstance(text, Granularity):
            return text
        if text is None:
            return cls()
        word = str(text).strip().lower()
        if word == "unstructured":
            return cls()
        if (nm := _NM.match(word)) is not None:
            return cls("nm", n=int(nm.group(1)), m=int(nm.group(2)))
        if (block := _BLOCK.match(word)) is not None:
            return cls("block", rows=int(block.group(1)), cols=int(block.group(2)))
        parts = word.split("+")
        if parts and all(p in UNITS for p in parts) and len(set(parts)) == len(parts):
            return cls("groups", units=tuple(parts))
        raise TicketlabError(f"Cannot read --granularity {text!r}: write unstructured, N:M (e.g. 2:4), block:RxC "
                             "(e.g. block:4x4), channel, head or channel+head.")

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block:{self.rows}x{self.cols}"
        if self.kind == "groups":
            return "+".join(self.units)
        return "unstructured"

    def to_json(self) -> str:
        return str(self)

    @property
    def is_unstructured(self) -> bool:
        return self.kind == "unstructured"

    @property
    def pattern(self) -> NMPattern | None:
        """The N:M pattern of an ``nm`` granularity (None otherwise)."""
        return NMPattern(self.n, self.m) if self.kind == "nm" else None

    @property
    def coupled(self) -> bool:
        """Groups that span several layers (channels, heads): compaction removes them physically."""
        return self.kind == "groups"

    @property
    def grouped(self) -> bool:
        """Selection works on groups (blocks, channels, heads) rather than single weights or N:M."""
        return self.kind in ("block", "groups")


def is_unstructured(value: "str | Granularity | None") -> bool:
    """Whether ``value`` (a config field: text or a `Granularity`) means single weights."""
    return Granularity.parse(value).is_unstructured


__all__ = ["Granularity", "HELP", "UNITS", "is_unstructured"]
