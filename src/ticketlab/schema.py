"""Typed checks for the JSON files ticketlab reads back, and the one rule for the sizes a file declares.

A file someone hands us holds data of any shape: a list where an object belongs, a string where a
number does, a negative size, a count of 10**30. Each reader describes the fields it uses as a
schema built from the checks here (`integer`, `real`, `text`, `flag`, `one_of`, `nullable`,
`list_of`, `dict_of`, `record`) and calls `validate` once, before using any field; the first field
that does not fit becomes one sentence naming the file and the field (``'density' of round entry 2
is not a finite number``). Fields a reader does not use are left unchecked and untouched.

Sizes a file declares (a tensor's shape, a model's widths, a decompressed length) are checked
against the bytes the file really holds with `check_declared` before anything is allocated, so a
small file can never make ticketlab allocate far beyond its own size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from .errors import TicketlabError

#: Where a value sits: the steps from the top, outermost first (``("round entry 2", "'density'")``).
Where = tuple[str, ...]
#: A check takes a value and where it sits, and returns the value or raises `Mismatch`.
Check = Callable[[Any, Where], Any]
#: Largest whole number a field may hold unless its schema says less: beyond it counts and sizes
#: stop being exact as floats, and no real count comes near it.
MAX_INTEGER = 2**53
#: The most a file may make ticketlab allocate, as a multiple of its own bytes (`check_declared`),
#: beyond `FLOOR_BYTES`. Compression is the only reason for more than 1x: the compact encoding of
#: a ticket at 0.1% density decodes to a few hundred times its size, an all-pruned layer more.
MAX_EXPANSION = 1024
#: Bytes any file may declare whatever its size (an all-zero tensor compresses to almost nothing).
FLOOR_BYTES = 16 << 20


class Mismatch(Exception):
    """A field that does not fit its schema; the message names it, e.g. ``'dense_file' of 'sizes' is
    0.5, not a whole number``."""


def _fail(where: Where, what: str) -> NoReturn:
    raise Mismatch(f"{' of '.join(reversed(where)) or 'the top level'} {what}")


def _field(where: Where, key: str) -> Where:
    return (*where, _short(key))


def _element(where: Where, key: str | int, label: str | None) -> Where:
    """Where an element of a list or object sits: ``label`` names elements in place of the field
    that holds them ("round entry 2" rather than "element 2 of 'rounds'")."""
    if label is None:
        return (*where, f"element {key}" if isinstance(key, int) else _short(key))
    name = f"{label} {key}" if isinstance(key, int) else f"{label} {_short(key)}"
    return (*where[:-1], name) if where else (name,)


def anything() -> Check:
    """Any JSON value (a field that is passed on but never computed with)."""
    return lambda value, where: value


def text(*, max_length: int = 10_000) -> Check:
    """A string of at most ``max_length`` characters."""
    def check(value: Any, where: Where) -> str:
        if not isinstance(value, str):
            _fail(where, f"is not a string ({_kind(value)})")
        if len(value) > max_length:
            _fail(where, f"is longer than {max_length} characters")
        return value
    return check


def flag() -> Check:
    """true or false."""
    def check(value: Any, where: Where) -> bool:
        if not isinstance(value, bool):
            _fail(where, f"is not true or false ({_kind(value)})")
        return value
    return check


def integer(low: int = 0, high: int = MAX_INTEGER) -> Check:
    """A whole number in ``[low, high]`` (not a bool, not a float such as 1e12)."""
    def check(value: Any, where: Where) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, f"is not a whole number ({_kind(value)})")
        if not low <= value <= high:
            _fail(where, f"is {_short(value)}, outside [{low}, {high}]")
        return value
    return check


def real(low: float = -math.inf, high: float = math.inf) -> Check:
    """A finite number (whole or not) in ``[low, high]``."""
    def check(value: Any, where: Where) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(where, f"is not a number ({_kind(value)})")
        if isinstance(value, float) and not math.isfinite(value):
            _fail(where, "is not a finite number")
        if not low <= value <= high:
            _fail(where, f"is {_short(value)}, outside [{low:g}, {high:g}]")
        return value
    return check


def one_of(*choices: Any) -> Check:
    """Exactly one of ``choices`` (compared by type and value: ``1`` is not ``true``)."""
    def check(value: Any, where: Where) -> Any:
        if not any(type(value) is type(c) and value == c for c in choices):
            _fail(where, f"is {_short(value)}, not one of {', '.join(map(repr, choices))}")
        return value
    return check


def nullable(inner: Check) -> Check:
    """null, or what ``inner`` accepts."""
    return lambda value, where: None if value is None else inner(value, where)


def list_of(item: Check, *, min_items: int = 0, max_items: int | None = None, label: str | None = None) -> Check:
    """A list whose every element passes ``item``, with ``min_items`` to ``max_items`` elements
    (``label``: what an element is called in a sentence, e.g. "round entry")."""
    def check(value: Any, where: Where) -> list[Any]:
        if not isinstance(value, list):
            _fail(where, f"is not a list ({_kind(value)})")
        if len(value) < min_items or (max_items is not None and len(value) > max_items):
            _fail(where, f"has {len(value)} elements, not {min_items} to {max_items if max_items is not None else 'any'}")
        for index, element in enumerate(value):
            item(element, _element(where, index, label))
        return value
    return check


def dict_of(item: Check, *, label: str | None = None) -> Check:
    """An object whose every value passes ``item`` (keys are strings in JSON; ``label`` as in `list_of`)."""
    def check(value: Any, where: Where) -> dict[str, Any]:
        if not isinstance(value, dict):
            _fail(where, f"is not an object ({_kind(value)})")
        for key, element in value.items():
            item(element, _element(where, key, label))
        return value
    return check


def record(required: Mapping[str, Check] | None = None, optional: Mapping[str, Check] | None = None) -> Check:
    """An object with every ``required`` field, each field of both maps passing its check when
    present; other fields are allowed and left unchecked."""
    required, optional = dict(required or {}), dict(optional or {})

    def check(value: Any, where: Where) -> dict[str, Any]:
        if not isinstance(value, dict):
            _fail(where, f"is not an object ({_kind(value)})")
        for key, field in required.items():
            if key not in value:
                _fail(where, f"has no field {key!r}")
            field(value[key], _field(where, key))
        for key, field in optional.items():
            if key in value:
                field(value[key], _field(where, key))
        return value
    return check


def validate(value: Any, schema: Check, path: str | os.PathLike, what: str) -> Any:
    """``value`` if it fits ``schema``; else a TicketlabError: "'PATH' is not WHAT (FIELD ...)."

    ``path`` names the file, ``what`` what it should be ("a ticketlab summary").
    """
    try:
        return schema(value, ())
    except Mismatch as err:
        raise TicketlabError(f"{str(path)!r} is not {what} ({err}).") from None


def problem(value: Any, schema: Check) -> str | None:
    """What does not fit ``schema`` in ``value`` (the field and why), or None."""
    try:
        schema(value, ())
    except Mismatch as err:
        return str(err)
    return None


def check_declared(declared: int, present: int, where: str, what: str, *, expansion: float = MAX_EXPANSION,
                   floor: int = FLOOR_BYTES) -> None:
    """Refuse, before anything is allocated, a file that declares more bytes than it could hold.

    ``declared``: the bytes building what the file describes would take (a decoded tensor, a model
    of the declared widths, one input of the declared shape); ``present``: the bytes the file really
    holds. At most ``expansion`` x ``present`` + ``floor`` is allowed; ``what`` names the declared
    thing in the sentence.
    """
    if declared > expansion * present + floor:
        raise TicketlabError(f"{where} declares {what} of {_bytes(declared)} from only {_bytes(present)} of stored "
                             "data; it is damaged or crafted, and nothing was built from it.")


def _bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else (f"{n:.1f} {unit}" if n < 1e6 else f"{n:.3g} {unit}")
        n /= 1024
    return f"{n:.3g} TiB"  # pragma: no cover


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a whole number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    """``repr(value)``, cut to 40 characters (a crafted field may be huge)."""
    shown = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else f"about 1e{len(str(abs(value))) - 1}"
    return shown if len(shown) <= 40 else shown[:37] + "..."


__all__ = [
    "FLOOR_BYTES",
    "MAX_EXPANSION",
    "MAX_INTEGER",
    "Check",
    "Mismatch",
    "anything",
    "check_declared",
    "dict_of",
    "flag",
    "integer",
    "list_of",
    "nullable",
    "one_of",
    "problem",
    "real",
    "record",
    "text",
    "validate",
]
