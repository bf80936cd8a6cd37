"""Where outputs named by the user may go, so that writing one never replaces or mixes a result.

Two rules, one function each, checked before anything is written:

* `check_png_target`: a plot path (``report --png``, or report's default) may replace only a PNG
  file (recognised by its 8-byte signature), never a directory or any other file; and inside a
  ticketlab directory (a run or an export, `enclosing_ticketlab_directory`) it may only be one of
  that directory's own report files (`REPORT_PNGS`, at its top level), never its config.json, a
  round's files or another command's plot.
* `check_output_directory`: a new output directory (``export --out``) never lies inside (or is)
  one of its inputs, never holds one, and never lies inside a run or an export directory.

`scratch_sibling` is a temporary directory beside an output, named and locked like the temporaries
of `ticketlab.files.atomic_directory`, so that the next writer's `remove_stale_siblings` deletes
it after a kill; `same_files` compares two trees byte for byte.
"""

from __future__ import annotations

import filecmp
import json
from collections.abc import Iterable
from pathlib import Path

from .errors import TicketlabError
from .files import temporary_directory

try:  # POSIX; without it (Windows) the scratch directory is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: The first 8 bytes of every PNG file.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The plots ``ticketlab report`` writes at the top of a run directory (or in the working directory).
REPORT_PNGS = ("report.png", "report-overlay.png", "report-kept.png")
#: The record of a directory written by ``ticketlab export`` and its format name
#: (`ticketlab.deploy.package.SPEC_FILE` and `PACKAGE_FORMAT`).
EXPORT_RECORD, EXPORT_FORMAT = "ticketlab.json", "ticketlab-deploy"
#: A config.json or ticketlab.json larger than this is no record of ours (and is not read).
MAX_RECORD_BYTES = 4 << 20


def is_png(path: Path) -> bool:
    """True if ``path`` is a readable regular file that starts with the PNG signature."""
    if not path.is_file():  # never open a directory, a FIFO or a device
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def _json_object(path: Path) -> dict | None:
    """The JSON object in ``path``, or None if it is missing, not a regular file, larger than any
    record of ours (`MAX_RECORD_BYTES`), unreadable or not an object."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
            return None
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return record if isinstance(record, dict) else None


def is_ticketlab_directory(directory: Path) -> bool:
    """A run directory (its config.json is ``{"kind", "config"}``, as `ticketlab.runs` writes it)
    or a directory written by ``export`` (its ticketlab.json names the export format). A lock file
    alone proves nothing: other programs (pytest, for one) leave a ``.lock`` too."""
    run = _json_object(directory / "config.json")
    export = _json_object(directory / EXPORT_RECORD)
    return (run is not None and set(run) == {"kind", "config"}) or (export is not None
                                                                    and export.get("format") == EXPORT_FORMAT)


def enclosing_ticketlab_directory(path: Path) -> Path | None:
    """The innermost run or export directory that is ``path`` or holds it (None if there is none)."""
    for candidate in (path, *path.parents):
        if candidate.is_dir() and is_ticketlab_directory(candidate):
            return candidate
    return None


def _resolved(path: Path, flag: str) -> Path:
    """``path`` absolute, with every symbolic link followed."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop (RuntimeError before Python 3.13)
        raise TicketlabError(f"{flag} {str(path)!r} cannot be resolved ({err}).") from None


def check_png_target(path: Path, flag: str = "--png", own: tuple[str, ...] = REPORT_PNGS) -> Path:
    """Refuse a plot path that would replace what is not a plot of ours (see the module docstring);
    ``own`` are the plot names a command may write at the top of a run or export directory.

    Returns ``path`` unchanged; a TicketlabError (one sentence) names the path and the rule.
    """
    target = _resolved(path, flag)
    if target.is_dir():
        raise TicketlabError(f"{flag} {str(path)!r} is a directory; give the name of a .png file to write.")
    if target.exists() and not is_png(target):
        raise TicketlabError(f"{flag} {str(path)!r} exists and is not a PNG file; ticketlab replaces only PNG "
                             "files, so choose a new name.")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise TicketlabError(f"{flag} {str(path)!r} lies under {str(parent)!r}, which is a file.")
    home = enclosing_ticketlab_directory(target.parent)
    if home is not None and (target.parent != home or target.name not in own):
        raise TicketlabError(f"{flag} {str(path)!r} lies inside the ticketlab directory {str(home)!r}, where this "
                             f"command may write only {', '.join(own)} at its top; choose a path outside it.")
    return path


def check_bench_outputs(out: Path, flag: str = "--out") -> Path:
    """Refuse a ``bench`` output directory whose ``bench.json`` or ``bench.png`` would replace a file
    that is not a bench result of ours (a JSON object with ``end_to_end`` timings, a PNG), or that
    lies inside a run or an export other than at its top. Returns ``out`` unchanged."""
    target = _resolved(out, flag)
    if target.exists() and not target.is_dir():
        raise TicketlabError(f"{flag} {str(out)!r} is a file; give a directory for bench.json and bench.png.")
    check_png_target(target / "bench.png", flag, own=("bench.png",))
    record = target / "bench.json"
    if record.exists() and "end_to_end" not in (_json_object(record) or {}):
        raise TicketlabError(f"{flag} {str(out)!r} holds a bench.json that is not a bench result of ticketlab; "
                             "choose another directory so it is not replaced.")
    return out


def check_output_directory(out: Path, inputs: Iterable[Path], flag: str = "--out") -> Path:
    """Refuse a new output directory that is, holds or lies inside one of ``inputs``, or lies inside
    a run or an export directory (symbolic links followed). Returns ``out`` unchanged."""
    target = _resolved(out, flag)
    for given in inputs:
        source = _resolved(given, "The source")
        if target == source or source in target.parents:
            raise TicketlabError(f"{flag} {str(out)!r} lies inside the source {str(given)!r}; choose a directory "
                                 "outside it so the source is never changed.")
        if target in source.parents:
            raise TicketlabError(f"{flag} {str(out)!r} holds the source {str(given)!r}; choose a new directory "
                                 "outside it.")
    home = enclosing_ticketlab_directory(target.parent)
    if home is not None:
        raise TicketlabError(f"{flag} {str(out)!r} lies inside the ticketlab directory {str(home)!r}; choose a "
                             "directory outside every run and export so none of them is changed.")
    return out


def scratch_sibling(out: Path):
    """A new, empty temporary directory beside ``out``, deleted when the block ends; a kill leaves
    it for the next writer of ``out`` to delete (`ticketlab.files.temporary_directory`)."""
    return temporary_directory(out)


def _kind(path: Path) -> str:
    """``link``, ``dir``, ``file`` or ``other`` (a FIFO, a device), links not followed."""
    if path.is_symlink():
        return "link"
    return "dir" if path.is_dir() else "file" if path.is_file() else "other"


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> `_kind`, for everything under ``root``."""
    return {str(p.relative_to(root)): _kind(p) for p in root.rglob("*")}


def same_files(a: Path, b: Path) -> bool:
    """True if the trees ``a`` and ``b`` hold the same names, of the same kinds, and their regular
    files the same bytes (a link or a FIFO never equals a file; nothing but regular files is opened)."""
    tree = _tree(a)
    if tree != _tree(b) or any(kind not in ("dir", "file") for kind in tree.values()):
        return False
    return all(kind == "dir" or filecmp.cmp(a / name, b / name, shallow=False) for name, kind in tree.items())
