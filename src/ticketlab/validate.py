"""Checks that every number a user gives is a real, finite value in a sane range.

Configs call these in ``__post_init__``, so a NaN learning rate, a seed too large for a random
generator or a budget that would run for centuries is one `TicketlabError` sentence before any
work starts, naming the flag. Upper bounds are generous (far beyond any real experiment) and
exist only so that a typo cannot start a run that never ends.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import TicketlabError

#: Seeds feed ``torch.Generator.manual_seed`` and hashing; 2**32 - 1 keeps them portable.
MAX_SEED = 2**32 - 1
#: The most training iterations or epochs one budget may name.
MAX_ITERATIONS = 10**9
MAX_EPOCHS = 10**6
#: The most replicates a count of seeds (``--seeds 3``) may ask for.
MAX_REPLICATES = 10_000
#: The largest learning rate accepted. Real ones are below 1 (SGD 0.1, Adam 1e-3); 10 only stops
#: typos such as 1e3 for 1e-3, and keeps every optimiser's step (lr / Adam's bias correction,
#: at most 10x lr) far inside float32, where a step of 1e308 cannot even be represented.
MAX_LR = 10.0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def real(value: Any, flag: str, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float within the given bounds (open or closed); else a TicketlabError."""
    if not _is_number(value) or not math.isfinite(value):
        raise TicketlabError(f"{flag} must be a finite number, not {value!r}.")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise TicketlabError(f"{flag} must be {_range_text(low, high, low_open, high_open)}, not {value:g}.")
    return float(value)


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        if low_open and high_open:
            return f"strictly between {low:g} and {high:g}"
        if not low_open and not high_open:
            return f"between {low:g} and {high:g}"
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"greater than {low:g}" if low_open else f"at least {low:g}"
    return f"less than {high:g}" if high_open else f"at most {high:g}"


def integer(value: Any, flag: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int within ``[low, high]``; else a TicketlabError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TicketlabError(f"{flag} must be a whole number, not {value!r}.")
    if low is not None and value < low:
        raise TicketlabError(f"{flag} must be at least {low}, not {value}.")
    if high is not None and value > high:
        raise TicketlabError(f"{flag} must be at most {high:,}, not {value:,}.")
    return value


def learning_rate(value: Any, flag: str = "The learning rate --lr") -> float:
    """A learning rate in ``(0, MAX_LR]`` (the two ends are two sentences, each naming its bound)."""
    rate = real(value, flag, low=0.0, low_open=True)
    if rate > MAX_LR:
        raise TicketlabError(f"{flag} must be at most {MAX_LR:g}, not {rate:g}; real learning rates are below 1 "
                             "(such as 0.1 for SGD, 1e-3 for Adam).")
    return rate


def text(value: Any, flag: str) -> str:
    """``value`` as a string with something in it: an empty (or blank) string is never a default."""
    if not isinstance(value, str) or not value.strip():
        raise TicketlabError(f"{flag} needs a value, not {value!r}.")
    return value


def seed(value: Any, flag: str = "A seed") -> int:
    """A seed in ``[0, MAX_SEED]``."""
    return integer(value, flag, low=0, high=MAX_SEED)


def fraction(value: Any, flag: str, *, closed_low: bool = False, closed_high: bool = False) -> float:
    """A finite number in (0, 1), with either end closed on request."""
    return real(value, flag, low=0.0, high=1.0, low_open=not closed_low, high_open=not closed_high)


def run_common(config: Any) -> None:
    """Checks shared by every experiment config: its ``seeds``, ``split_seed``, ``val_fraction`` and
    model ``width`` multiplier (stored back as a float)."""
    if not config.seeds:
        raise TicketlabError("At least one seed is needed.")
    for value in config.seeds:
        seed(value, "A seed in --seeds")
    if len(set(config.seeds)) != len(config.seeds):
        raise TicketlabError("A seed is listed twice in --seeds.")
    seed(config.split_seed, "--split-seed")
    fraction(config.val_fraction, "--val-fraction")
    if hasattr(config, "width"):
        object.__setattr__(config, "width", real(config.width, "The width multiplier --width", low=0.0, high=64.0,
                                                 low_open=True))
