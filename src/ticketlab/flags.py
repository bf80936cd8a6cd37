"""How a config field describes its own command-line flag, and the one JSON form of every config.

A field declared with `setting` carries a `Flag` in its metadata: the help text, how the flag's
text becomes the field's value (``parse``), how the default is shown, and — for names — the
registry its choices come from. `ticketlab.cli.options` builds the click options from these, so a
flag lives in one place (the field), and `config_json` serialises any config dataclass.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import validate
from .errors import TicketlabError
from .steps import Step

_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Flag:
    """How one config field appears on the command line.

    ``parse`` turns the flag's value (text, or a tuple of texts for ``multiple``) into the field's
    value; ``shown`` is the default as the flag would be written (None: derived from the field's default); ``choices``
    returns the registered names the flag accepts; ``name`` overrides ``--field-name``; ``dest`` the
    parsed option's key (default: the field's name; needed where two configs of one command share a
    field name); ``required`` makes the command refuse to run without it.
    """

    help: str
    parse: Callable[[Any], Any] | None = None
    shown: Any = None
    choices: Callable[[], Sequence[str]] | None = None
    name: str | None = None
    metavar: str | None = None
    multiple: bool = False
    is_flag: bool = False
    type: Any = None
    omit: Callable[[Any], bool] | None = None   # leave the field out of config.json when this holds
    dest: str | None = None
    required: bool = False

    def flag_name(self, field_name: str) -> str:
        """The flag as click declares it: ``--batch-size``, or both spellings of a switch
        (``--dense/--no-dense``)."""
        return self.name or "--" + field_name.replace("_", "-")

    def option_name(self, field_name: str) -> str:
        """The flag's first spelling, ``--dense`` for ``--dense/--no-dense``: the name a recipe
        or a message uses for it."""
        return self.flag_name(field_name).split("/")[0]

    def is_switch(self, field_name: str) -> bool:
        """Whether the flag is declared as an on/off pair (``--x/--no-x``)."""
        return "/" in self.flag_name(field_name)

    def key(self, field_name: str) -> str:
        """The parsed option's key for the field ``field_name``."""
        return self.dest or field_name


def setting(default: Any = _MISSING, *, default_factory: Any = _MISSING, **flag: Any) -> Any:
    """A dataclass field that is also a command-line flag (`Flag`'s arguments as keywords)."""
    metadata = {"flag": Flag(**flag)}
    if default_factory is not _MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_of(f: dataclasses.Field) -> Flag | None:
    return f.metadata.get("flag")


# --- parsing helpers shared by the flags ------------------------------------------------------------
#: Whole numbers and decimals in ASCII digits only: Python's int() and float() also read other
#: scripts' digits ("٣"), underscores ("1_000") and surrounding blanks, none of which a flag takes.
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(nan|inf|infinity)",
                       re.IGNORECASE)


def split_list(text: Any, flag: str = "A comma list") -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; blank text (or only commas) -> ``[]``, and the caller
    says whether none is allowed. An empty item beside others (``"a,,b"``, ``"a,"``) is refused,
    naming ``flag``: dropping it would hide a typo."""
    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts):
        return []
    if not all(parts):
        raise TicketlabError(f"{flag} {str(text)!r} has an empty item; separate the values by single commas.")
    return parts


def parse_int(text: Any, flag: str) -> int:
    """``"42"`` -> 42 (digits 0-9, an optional sign); anything else is one sentence naming ``flag``."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if not _INT_RE.fullmatch(str(text).strip()):
        raise TicketlabError(f"Cannot read {flag} {str(text)!r}: give a whole number in the digits 0-9.")
    return int(str(text))


def parse_float(text: Any, flag: str) -> float:
    """``"1e-3"`` -> 0.001 (digits 0-9; ``nan`` and ``inf`` are read, for the range checks to refuse
    in their own words); anything else is one sentence naming ``flag``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    if not _FLOAT_RE.fullmatch(str(text).strip()):
        raise TicketlabError(f"Cannot read {flag} {str(text)!r}: give a number in the digits 0-9, such as 0.5 or 1e-3.")
    return float(str(text))


def parse_seeds(text: Any) -> tuple[int, ...]:
    """``"3"`` means three replicates (seeds 0, 1, 2); ``"0,5,7"`` lists the seeds themselves.

    ``text`` is what the flag was given (or a recipe's value: text or a number, never a tuple
    for a flag that is not repeatable), so every value goes through the one path below. A count
    is bounded (`validate.MAX_REPLICATES`); listed seeds are checked by `validate.run_common`."""
    items = split_list(text, "--seeds")
    try:
        parts = [parse_int(p, "--seeds") for p in items]
    except TicketlabError:
        raise TicketlabError(f"Cannot read --seeds {str(text)!r}: give a count like 3 or a list like 0,1,2 "
                             "(digits 0-9).") from None
    if not parts:
        raise TicketlabError("--seeds needs at least one seed.")
    if len(parts) == 1 and "," not in str(text):
        if parts[0] < 1:
            raise TicketlabError("--seeds needs at least one seed.")
        validate.integer(parts[0], "A count of replicates --seeds", high=validate.MAX_REPLICATES)
        return tuple(range(parts[0]))
    return tuple(parts)


def floats_parser(flag: str) -> Callable[[Any], tuple[float, ...]]:
    """A parser of ``"0.2,0.05"`` -> ``(0.2, 0.05)`` whose errors name ``flag``."""
    def parse(text: Any) -> tuple[float, ...]:
        items = split_list(text, flag)
        if not items:
            raise TicketlabError(f"{flag} needs at least one value.")
        try:
            return tuple(parse_float(p, flag) for p in items)
        except TicketlabError:
            raise TicketlabError(f"Cannot read {flag} {str(text)!r}: give numbers separated by commas "
                                 "(digits 0-9).") from None
    return parse


def ints_parser(flag: str) -> Callable[[Any], tuple[int, ...]]:
    """A parser of ``"1,8,64"`` -> ``(1, 8, 64)`` whose errors name ``flag`` (ranges are the caller's)."""
    def parse(text: Any) -> tuple[int, ...]:
        items = split_list(text, flag)
        if not items:
            raise TicketlabError(f"{flag} needs at least one value.")
        try:
            return tuple(parse_int(p, flag) for p in items)
        except TicketlabError:
            raise TicketlabError(f"Cannot read {flag} {str(text)!r}: give whole numbers like 1,8,64 "
                                 "(digits 0-9).") from None
    return parse


def items_parser(flag: str) -> Callable[[Any], tuple[str, ...]]:
    """A parser of a comma list into its items (blank: none), whose errors name ``flag``."""
    def parse(text: Any) -> tuple[str, ...]:
        return tuple(split_list(text, flag))
    return parse


def names_parser(flag: str) -> Callable[[Any], tuple[str, ...]]:
    """A parser of a comma list of names (``none``, or blank, means none) whose errors name ``flag``."""
    def parse(text: Any) -> tuple[str, ...]:
        return () if str(text).strip().lower() in ("", "none") else tuple(split_list(text, flag))
    return parse


def parse_names(text: Any) -> tuple[str, ...]:
    """A comma list of names; ``none`` (or blank, from a recipe or a script: the command line
    refuses an empty value typed) means none (`names_parser` names the flag)."""
    return names_parser("A list of names")(text)


def show_list(values: Sequence[Any]) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) or "none"


# --- one serialisation ---------------------------------------------------------------------------
def json_value(value: Any) -> Any:
    """A field value as JSON: configs by their ``to_json``, steps as text, tuples as lists."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, Step):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [json_value(v) for v in value]
    return value


def config_json(config: Any, leave_out: Sequence[str] = ()) -> dict[str, Any]:
    """Every field of a config dataclass as JSON, in field order, except ``leave_out`` and fields
    whose `Flag.omit` holds for their value (so fields added later leave old run directories valid)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        flag = flag_of(f)
        if f.name in leave_out or (flag is not None and flag.omit is not None and flag.omit(value)):
            continue
        out[f.name] = json_value(value)
    return out


def is_none(value: Any) -> bool:
    return value is None


__all__ = ["Flag", "config_json", "flag_of", "floats_parser", "ints_parser", "is_none", "items_parser", "json_value",
           "names_parser", "parse_float", "parse_int", "parse_names", "parse_seeds", "setting", "show_list",
           "split_list"]
