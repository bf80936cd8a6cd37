"""How a config field describes its own command-line flag, and the one JSON form of every config.

A field declared with `setting` carries a `Flag` in its metadata: the help text, how the flag's
text becomes the field's value (``parse``), how the default is shown, and — for names — the
registry its choices come from. `ticketlab.cli.options` builds the click options from these, so a
flag lives in one place (the field), and `config_json` serialises any config dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


def parse_seeds(text: Any) -> tuple[int, ...]:
    """``"3"`` means three replicates (seeds 0, 1, 2); ``"0,5,7"`` lists the seeds themselves.

    ``text`` is what the flag was given (or a recipe's value: text or a number, never a tuple
    for a flag that is not repeatable), so every value goes through the one path below."""
    try:
        parts = [int(p) for p in split_list(text)]
    except ValueError:
        raise TicketlabError(f"Cannot read --seeds {text!r}: give a count like 3 or a list like 0,1,2.") from None
    if not parts:
        raise TicketlabError("--seeds needs at least one seed.")
    if len(parts) == 1 and "," not in str(text):
        if parts[0] < 1:
            raise TicketlabError("--seeds needs at least one seed.")
        return tuple(range(parts[0]))
    return tuple(parts)


def floats_parser(flag: str) -> Callable[[Any], tuple[float, ...]]:
    """A parser of ``"0.2,0.05"`` -> ``(0.2, 0.05)`` whose errors name ``flag``."""
    def parse(text: Any) -> tuple[float, ...]:
        try:
            values = tuple(float(p) for p in split_list(text))
        except ValueError:
            raise TicketlabError(f"Cannot read {flag} {text!r}: give numbers separated by commas.") from None
        if not values:
            raise TicketlabError(f"{flag} needs at least one value.")
        return values
    return parse


def parse_names(text: Any) -> tuple[str, ...]:
    """A comma list of names; ``none`` (or empty) means none."""
    return () if str(text).strip().lower() in ("", "none") else tuple(split_list(text))


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


__all__ = ["Flag", "config_json", "flag_of", "floats_parser", "is_none", "json_value", "parse_names", "parse_seeds",
           "setting", "show_list", "split_list"]
