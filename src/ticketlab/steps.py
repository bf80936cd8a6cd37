"""Training-time positions written as step strings: ``"500it"`` (iterations) or ``"2ep"`` (epochs).

The same syntax is used wherever a step is named (training budget, rewind point, warm-up,
learning-rate drops, evaluation interval), as in OpenLTH. A `Step` stays symbolic until it is
resolved against the number of iterations per epoch of a concrete dataset and batch size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import TicketlabError
from .validate import MAX_EPOCHS, MAX_ITERATIONS

#: ASCII digits right before the unit: ``\d`` would also take other scripts' digits (``٥it``), and a
#: space inside (``5 it``) is refused like any other unreadable step.
_STEP_RE = re.compile(r"([0-9]+)(it|ep)")


@dataclass(frozen=True)
class Step:
    """A position in training: ``count`` iterations (``unit='it'``) or epochs (``unit='ep'``)."""

    count: int
    unit: str  # "it" or "ep"

    def __post_init__(self) -> None:
        if self.unit not in ("it", "ep"):
            raise TicketlabError(f"Step unit must be 'it' or 'ep', not {self.unit!r}.")
        if isinstance(self.count, bool) or not isinstance(self.count, int):
            raise TicketlabError(f"A step count must be a whole number (got {self.count!r}).")
        if self.count < 0:
            raise TicketlabError(f"A step cannot be negative (got {self.count}).")
        limit = MAX_ITERATIONS if self.unit == "it" else MAX_EPOCHS
        if self.count > limit:
            raise TicketlabError(f"The step {self.count}{self.unit} is beyond the limit of {limit:,}{self.unit}.")

    @classmethod
    def parse(cls, text: "str | int | Step") -> "Step":
        """Parse ``"500it"`` or ``"2ep"``; ``"0"`` (the start) and Python ints (iterations) need no unit.

        A bare number such as ``"10"`` is refused: whether it meant iterations or epochs is a
        factor of hundreds in training time, so the unit must be written.
        """
        if isinstance(text, Step):
            return text
        if isinstance(text, int) and not isinstance(text, bool):
            return cls(text, "it")
        bare = str(text).strip()
        match = _STEP_RE.fullmatch(bare)
        if match is None:
            digits = bare.isascii() and bare.isdigit()
            if digits and int(bare) == 0:
                return cls(0, "it")
            if digits:
                raise TicketlabError(
                    f"The step {bare!r} has no unit: write {bare}it for iterations or {bare}ep for epochs."
                )
            raise TicketlabError(
                f"Cannot read step {text!r}: write a number of iterations like '500it' or epochs like '2ep' "
                "(digits 0-9, no space before the unit)."
            )
        return cls(int(match.group(1)), match.group(2))

    def surely_not_before(self, other: "Step") -> bool:
        """Whether this step is at or after ``other`` whatever the epoch length (an epoch is at
        least one iteration): decidable before the data is known for ``5ep`` against ``3it``, not
        for ``5it`` against ``1ep``."""
        if other.count == 0:
            return True
        return self.count >= other.count and (self.unit == other.unit or self.unit == "ep")

    def surely_after(self, other: "Step") -> bool:
        """Whether this step is strictly after ``other`` whatever the epoch length (see
        `surely_not_before`)."""
        if self.count == 0:
            return False
        if other.count == 0:
            return True
        return self.count > other.count and (self.unit == other.unit or self.unit == "ep")

    def iterations(self, iterations_per_epoch: int) -> int:
        """This step as an iteration count, given how many iterations make one epoch."""
        if self.unit == "it":
            return self.count
        return self.count * iterations_per_epoch

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"
