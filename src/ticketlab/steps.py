"""Training-time positions written as step strings: ``"500it"`` (iterations) or ``"2ep"`` (epochs).

The same syntax is used wherever a step is named (training budget, rewind point, warm-up,
learning-rate drops, evaluation interval), as in OpenLTH. A `Step` stays symbolic until it is
resolved against the number of iterations per epoch of a concrete dataset and batch size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import TicketlabError

_STEP_RE = re.compile(r"^\s*(\d+)\s*(it|ep)\s*$")


@dataclass(frozen=True)
class Step:
    """A position in training: ``count`` iterations (``unit='it'``) or epochs (``unit='ep'``)."""

    count: int
    unit: str  # "it" or "ep"

    def __post_init__(self) -> None:
        if self.unit not in ("it", "ep"):
            raise TicketlabError(f"Step unit must be 'it' or 'ep', not {self.unit!r}.")
        if self.count < 0:
            raise TicketlabError(f"A step cannot be negative (got {self.count}).")

    @classmethod
    def parse(cls, text: "str | int | Step") -> "Step":
        """Parse ``"500it"``, ``"2ep"``, or a bare integer (iterations; ``0`` means the start)."""
        if isinstance(text, Step):
            return text
        if isinstance(text, int):
            return cls(text, "it")
        match = _STEP_RE.match(str(text))
        if match is None:
            if str(text).strip().isdigit():
                return cls(int(str(text).strip()), "it")
            raise TicketlabError(
                f"Cannot read step {text!r}: write a number of iterations like '500it' or epochs like '2ep'."
            )
        return cls(int(match.group(1)), match.group(2))

    def iterations(self, iterations_per_epoch: int) -> int:
        """This step as an iteration count, given how many iterations make one epoch."""
        if self.unit == "it":
            return self.count
        return self.count * iterations_per_epoch

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"
