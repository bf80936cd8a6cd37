"""User code named on the command line: ``--model module:function`` and ``--data module:function``.

``--model mymodels:tiny_mlp`` imports ``mymodels`` and calls ``tiny_mlp(input_shape, num_classes)``
(`ticketlab.models`); ``--data module:function`` calls ``function()`` (`ticketlab.data`). Importing
runs the user's code, so it happens only for specs the user named on this very command line: the
command line calls `trust_user_code` with its own --model / --data values, and a spec found
anywhere else (a run directory's config.json or model.json, read by report, export or stability)
is refused. Resuming a run is the same command line again, so it trusts the spec again.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

from .errors import TicketlabError, first_line   # first_line re-exported for older importers

_TRUSTED: set[str] = set()


def is_user_code(name: Any) -> bool:
    """Whether ``name`` is a ``module:function`` spec rather than a registered name."""
    return isinstance(name, str) and ":" in name


def trust_user_code(*specs: str | None) -> None:
    """Let `create_model` / `load_dataset` import these ``module:function`` specs in this process.

    The command line calls it with its own ``--model`` and ``--data`` values (registered names and
    None are ignored); Python users call it for a spec they pass themselves, or register a builder
    with `register_model` instead. Nothing is imported or checked yet (that happens on use, in a
    sentence naming the flag).
    """
    for spec in specs:
        if is_user_code(spec):
            _TRUSTED.add(spec.strip())


def check_typed_specs(run: str, used: dict[str, Any], typed: dict[str, str | None]) -> None:
    """Refuse a ``--model`` / ``--data`` spec typed for a run that was not built with it.

    ``used`` maps each flag to what the run's config names (a registered name or a spec),
    ``typed`` to what this command line typed (None: not typed). A typed spec that differs would
    otherwise be silently ignored, so the user would believe their code was used."""
    for flag, spec in typed.items():
        if spec is None or str(spec).strip() == str(used.get(flag)).strip():
            continue
        if is_user_code(used.get(flag)):
            raise TicketlabError(f"{flag} {spec!r} is not what {run!r} was trained with ({used.get(flag)!r}); "
                                 f"type that spec again, or leave {flag} out.")
        raise TicketlabError(f"{run!r} was trained with the registered {flag[2:]} {used.get(flag)!r}, not user "
                             f"code; leave {flag} out.")


def trusted_user_code() -> tuple[str, ...]:
    """The specs `trust_user_code` allowed in this process (handed on to worker processes)."""
    return tuple(sorted(_TRUSTED))


def _split_spec(spec: str, flag: str) -> tuple[str, str]:
    module, _, function = spec.strip().partition(":")
    if not all(part.isidentifier() for part in module.split(".")) or not function.isidentifier():
        raise TicketlabError(f"Cannot read {flag} {spec!r}: write module:function, e.g. mymodels:tiny_mlp "
                             "for the function tiny_mlp in mymodels.py.")
    return module, function


def import_user_function(spec: str, flag: str) -> Callable[..., Any]:
    """The function a trusted ``module:function`` ``spec`` names, imported from the working
    directory or ``sys.path``; one sentence naming ``flag`` for every way this can fail."""
    spec = spec.strip()
    module_name, function_name = _split_spec(spec, flag)
    if spec not in _TRUSTED:
        raise TicketlabError(f"ticketlab imports user code such as {spec!r} only when this command's own {flag} "
                             f"names it (type {flag} {spec}; from Python, call trust_user_code({spec!r}) first), "
                             "never from a run directory's files.")
    module = _import_module(module_name, spec, flag)
    function = getattr(module, function_name, None)
    if function is None:
        raise TicketlabError(f"Module {module_name!r} ({getattr(module, '__file__', None) or 'no file'}) has no "
                             f"function {function_name!r} for {flag} {spec}.")
    if not callable(function):
        raise TicketlabError(f"{flag} {spec} names a {type(function).__name__}, not a function.")
    return function


def _import_module(module_name: str, spec: str, flag: str):
    """``import module_name`` with the working directory on ``sys.path`` for this import only
    (when it is not there already: a console script puts its own directory there instead)."""
    cwd = os.getcwd()
    added = "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise TicketlabError(f"Cannot import module {module_name!r} for {flag} {spec}: it is neither in the "
                                 f"working directory ({cwd}) nor on PYTHONPATH.") from None
        raise TicketlabError(f"Importing module {module_name!r} for {flag} {spec} failed: {first_line(err)}.") from None
    except Exception as err:  # noqa: BLE001 - the user's module may raise anything while it loads
        raise TicketlabError(f"Importing module {module_name!r} for {flag} {spec} raised "
                             f"{type(err).__name__}: {first_line(err)}.") from None
    finally:
        if added:
            sys.path.remove(cwd)


def call_user_function(function: Callable[..., Any], spec: str, *args: Any) -> Any:
    """``function(*args)``; an exception it raises becomes one sentence (a TicketlabError keeps its own)."""
    try:
        return function(*args)
    except TicketlabError:
        raise
    except Exception as err:  # noqa: BLE001 - user code
        shown = ", ".join(repr(a) for a in args)
        raise TicketlabError(f"{spec}({shown}) raised {type(err).__name__}: {first_line(err)}.") from None


__all__ = ["call_user_function", "first_line", "import_user_function", "is_user_code", "trust_user_code", "trusted_user_code"]
