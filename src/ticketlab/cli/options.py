"""Click options generated from the config dataclasses' fields (`ticketlab.flags.Flag`).

A training command declares ``@config_options(IMPConfig)``: one option per field that carries a
`Flag` — the shared `RunConfig` fields, the experiment's own, and the `TrainConfig` fields of its
``train`` — with the help, default and choices the field declares. `config_from` turns the parsed
values back into the config, parsing each with the field's own ``parse``. A recipe
(`ticketlab.recipes`) supplies other defaults; a flag given on the command line still wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import click

from ..errors import TicketlabError
from ..flags import Flag, flag_of, parse_float, parse_int, show_list
from ..steps import Step
from ..train.config import TrainConfig


class Number(click.ParamType):
    """A click type reading whole numbers (``int``) or decimals (``float``) in the digits 0-9 only
    (`ticketlab.flags.parse_int` / `parse_float`): click's own INT and FLOAT go through Python's
    int() and float(), which also take other scripts' digits and underscores."""

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.name = "integer" if kind is int else "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        flag = param.opts[0] if param is not None and param.opts else "the value"
        return parse_int(value, flag) if self.kind is int else parse_float(value, flag)


#: The click types of the flags typed ``int`` / ``float``.
INT, FLOAT = Number(int), Number(float)
_NUMBER_TYPES = {int: INT, float: FLOAT}


def refuse_empty_values() -> None:
    """An empty (or blank) value typed for any option of the running command — ``--out ''``,
    ``--model ''``, one of a repeated flag's values — is one sentence: an empty string is never
    the default. (Outside a click command, nothing to check.)"""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or not param.name or not given_on_command_line(param.name):
            continue
        value = ctx.params.get(param.name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, str) and not v.strip() for v in values):
            raise TicketlabError(f"{param.opts[0]} was given an empty value; give one, or leave the flag out "
                                 "for its default.")


def _shown(value: Any, flag: Flag) -> Any:
    """The field default as it would be typed on the command line."""
    if flag.shown is not None:
        return flag.shown
    if isinstance(value, Step):
        return str(value)
    if isinstance(value, tuple) and not flag.multiple:
        return show_list(value)
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _option(f: dataclasses.Field, flag: Flag) -> Callable:
    default = _field_default(f)
    kwargs: dict[str, Any] = {"help": flag.help}
    if flag.is_flag or flag.is_switch(f.name):   # --x (off by default) or --x/--no-x
        kwargs.update(default=bool(default if flag.shown is None else flag.shown),
                      **({"is_flag": True} if flag.is_flag else {"show_default": True}))
    elif flag.multiple:
        kwargs.update(multiple=True, default=(), metavar=flag.metavar)
    else:
        shown = _shown(default, flag)
        kwargs.update(default=shown, show_default=shown is not None and shown != "", metavar=flag.metavar)
        if flag.choices is not None:
            kwargs["type"] = click.Choice(list(flag.choices()))
        elif flag.type is not None:
            kwargs["type"] = _NUMBER_TYPES.get(flag.type, flag.type)
    if flag.required:
        kwargs["required"] = True
    return click.option(flag.flag_name(f.name), flag.key(f.name), **kwargs)


def flagged_fields(cls: type) -> list[tuple[dataclasses.Field, Flag]]:
    """The fields of ``cls`` that are flags, in declaration order, then those of its ``train``."""
    out = [(f, flag_of(f)) for f in dataclasses.fields(cls) if flag_of(f) is not None]
    if any(f.name == "train" for f in dataclasses.fields(cls)):
        out += [(f, flag_of(f)) for f in dataclasses.fields(TrainConfig) if flag_of(f) is not None]
    return out  # type: ignore[return-value]


def config_options(*classes: type, skip: Iterable[str] = ()) -> Callable[[Callable], Callable]:
    """A decorator adding one click option per flag field of each of ``classes`` (see
    `flagged_fields`), in their order; ``skip`` names fields to leave out."""
    skipped = set(skip)
    options = [_option(f, flag) for cls in classes for f, flag in flagged_fields(cls) if f.name not in skipped]

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


def given_on_command_line(name: str) -> bool:
    """Whether the option ``name`` was typed by the user (not a default)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return True
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _values(cls: type, opts: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``cls`` from the parsed options (``defaults`` fill options not typed)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        flag = flag_of(f)
        if flag is None or flag.key(f.name) not in opts:
            continue
        raw = opts[flag.key(f.name)]
        if f.name in defaults and not given_on_command_line(flag.key(f.name)):
            raw = defaults[f.name]
        if raw is None or (flag.multiple and raw == () and f.name not in defaults):
            continue
        out[f.name] = flag.parse(raw) if flag.parse is not None else raw
    return out


def config_from(cls: type, opts: Mapping[str, Any], defaults: Mapping[str, Any] | None = None, **fixed: Any) -> Any:
    """``cls`` built from the parsed options (``fixed`` fields given by the command itself); an
    empty value typed for any of the command's options is refused first (`refuse_empty_values`)."""
    refuse_empty_values()
    defaults = defaults or {}
    values = _values(cls, opts, defaults)
    if any(f.name == "train" for f in dataclasses.fields(cls)):
        train = _values(TrainConfig, opts, defaults)
        if "augment" in train:   # "auto": on for CIFAR-10, off for MNIST-like data
            from ..data.augment import resolve_augment
            train["augment"] = resolve_augment(train["augment"], values.get("data", fixed.get("data", "")))
        values["train"] = TrainConfig(**train)
    config = cls(**values, **fixed)
    from ..models import trust_user_code   # --model / --data module:function typed by the user

    trust_user_code(getattr(config, "model", None), getattr(config, "data", None))
    return config


__all__ = ["FLOAT", "INT", "Number", "config_from", "config_options", "flagged_fields", "given_on_command_line",
           "refuse_empty_values"]
