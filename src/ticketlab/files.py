"""Files written safely: atomically, deterministically, with the user's umask, and never executable.

Every file ticketlab writes goes through this module:

* `atomic_path` / `atomic_directory` write under a temporary sibling name (``.NAME.<8 chars>.tmp``)
  and rename into place, so a kill at any instant leaves the old file or the new one, never a torn
  one. `remove_leftovers` deletes such temporaries after a kill (a rerun calls it), so they never
  block the rerun.
* New files get mode ``0o666 & ~umask`` and directories ``0o777 & ~umask``, like the output of any
  other program (``tempfile.mkstemp`` / ``mkdtemp`` would make them private to the user).
* `save_safetensors` stores metadata under one key as sorted JSON: safetensors writes a metadata
  map of several keys in a random order, so identical inputs would give different bytes.
* `save_tree` / `load_tree` store nested containers of tensors and plain values (a training
  checkpoint) as safetensors plus JSON. Loading such a file cannot run code, unlike a pickle
  (``torch.load``), so a file planted in a run directory is data, never a program.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import TicketlabError

try:  # POSIX; without it (Windows) directory locks are skipped
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: Temporary names: ours (``.NAME.<8 hex>.tmp``, or ``.NAME.<pid>-<8 hex>.tmp`` for directories)
#: and those of ``tempfile.mkstemp`` in earlier versions (``.NAME.<8 of [a-z0-9_]>.tmp``).
_TEMPORARY = re.compile(r"^\..+\.(?:(?P<pid>\d+)-)?[0-9a-z_]{8}\.tmp$")
#: Metadata key of every safetensors file ticketlab writes (one key: see the module docstring).
METADATA_KEY = "ticketlab"
#: Format name and version of a checkpoint written by `save_tree`.
TREE_FORMAT, TREE_VERSION = "ticketlab-tree", 1


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file or directory of ours (a leftover after a kill)."""
    return _TEMPORARY.match(name) is not None


def _temporary_name(final: Path, *, with_pid: bool = False) -> Path:
    tag = f"{os.getpid()}-" if with_pid else ""
    return final.parent / f".{final.name}.{tag}{secrets.token_hex(4)}.tmp"


def current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _create_temporary_file(final: Path) -> Path:
    """An empty new file beside ``final`` with the umask's permissions (``O_EXCL``: never reused)."""
    for _ in range(100):
        candidate = _temporary_name(final)
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return candidate
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "Cannot create a temporary file", str(final.parent))  # pragma: no cover


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary_file(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # writers that recreate the file (safetensors) make it 0600
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (key order as given, so output is deterministic)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; an unreadable or malformed file is a TicketlabError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TicketlabError(f"Cannot read {str(path)!r} as JSON ({err}).") from None


# --- directories -------------------------------------------------------------------------------
def _lock_directory(path: Path) -> int | None:
    """Open ``path`` and hold an exclusive flock on it (returns the fd; None without fcntl)."""
    if fcntl is None:  # pragma: no cover
        return None
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_directory(path: Path) -> bool:
    """A temporary directory whose writer is gone: its PID is dead and nothing holds its lock."""
    match = _TEMPORARY.match(path.name)
    if match is None or not path.is_dir():
        return False
    if match.group("pid") is not None and _pid_alive(int(match.group("pid"))):
        return False
    if fcntl is None:  # pragma: no cover
        return True
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def remove_stale_siblings(out: Path) -> list[Path]:
    """Delete temporary directories of ``out`` (``.OUT.*.tmp`` beside it) left by killed writers."""
    removed = []
    if not out.parent.is_dir():
        return removed
    prefix = f".{out.name}."
    for entry in sorted(out.parent.iterdir()):
        if entry.name.startswith(prefix) and _stale_directory(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def is_empty_directory(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary sibling directory of ``out``; rename it onto ``out`` if the block succeeds.

    ``out`` must not exist or be an empty directory, when the block starts and when it ends (a
    TicketlabError otherwise, with ``out`` left as it was). While the block runs, the temporary
    directory is flock-ed, so a concurrent writer's `remove_stale_siblings` leaves it alone; a
    directory left by a killed writer is removed by the next one.
    """
    out = Path(out)
    _check_free(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(out)
    tmp = _temporary_name(out, with_pid=True)
    os.mkdir(tmp, 0o777)
    fd = _lock_directory(tmp)
    try:
        yield tmp
        follow_umask(tmp)
        _check_free(out)
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as err:
        raise TicketlabError(f"Cannot write {str(out)!r} ({err.strerror or err}); nothing was left behind.") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def _check_free(out: Path) -> None:
    if out.exists() and not is_empty_directory(out):
        what = "a file" if not out.is_dir() else "not empty"
        raise TicketlabError(f"--out {str(out)!r} exists and is {what}; choose a new directory so nothing is overwritten.")


def follow_umask(root: Path) -> None:
    """Give ``root`` and everything under it the umask's permissions (writers such as safetensors
    and ``mkdtemp`` create private files)."""
    umask = current_umask()
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def remove_leftovers(root: Path, *, skip: Any = None) -> list[Path]:
    """Delete our temporary files and directories anywhere under ``root`` (after a kill).

    Only call it while holding ``root``'s run lock: nothing else may be writing there. ``skip(dir)``
    returning True keeps a sub-directory out of the walk (nested run directories with locks of
    their own). Returns what was removed.
    """
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        if is_temporary(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        elif entry.is_dir() and not entry.is_symlink() and not (skip is not None and skip(entry)):
            removed.extend(remove_leftovers(entry, skip=skip))
    return removed


# --- safetensors ---------------------------------------------------------------------------------
def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                     metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``tensors`` (CPU, contiguous copies are made) atomically; ``metadata`` as sorted JSON."""
    from safetensors.torch import save_file

    data = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    meta = {METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)} if metadata else None
    with atomic_path(path) as tmp:
        try:
            save_file(data, str(tmp), metadata=meta)
        except Exception as err:  # safetensors reports a failed write (disk full, quota) as its own type
            raise TicketlabError(f"Cannot write {str(path)!r} ({_reason(err)}).") from None


def read_safetensors(path: str | os.PathLike, what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and ticketlab metadata of a safetensors file (a TicketlabError naming it if unreadable)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise TicketlabError(f"The {what} {str(path)!r} does not exist.")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
        metadata = json.loads(raw) if raw is not None else {}
    except Exception as err:  # safetensors raises several types for damaged files
        raise TicketlabError(f"The {what} {str(path)!r} is not a readable safetensors file ({_reason(err)}).") from None
    if not isinstance(metadata, dict):
        raise TicketlabError(f"The {what} {str(path)!r} has malformed metadata.")
    return tensors, metadata


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


# --- trees of tensors and plain values (checkpoints) ----------------------------------------------
def _encode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of ``node``; tensors move to ``tensors`` under keys in visiting order."""
    if isinstance(node, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = node.detach().to("cpu").contiguous().clone()
        return {"$tensor": key}
    if isinstance(node, Mapping):
        items = list(node.items())
        if all(isinstance(k, str) and not k.startswith("$") for k, _ in items):
            return {k: _encode(v, tensors) for k, v in items}
        return {"$items": [[_encode(k, tensors), _encode(v, tensors)] for k, v in items]}
    if isinstance(node, tuple):
        return {"$tuple": [_encode(v, tensors) for v in node]}
    if isinstance(node, list):
        return [_encode(v, tensors) for v in node]
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"save_tree cannot store a {type(node).__name__}")


def _decode(node: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "$tensor" in node:
        return tensors[node["$tensor"]]
    if "$tuple" in node:
        return tuple(_decode(v, tensors) for v in node["$tuple"])
    if "$items" in node:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in node["$items"]}
    return {k: _decode(v, tensors) for k, v in node.items()}


def save_tree(path: str | os.PathLike, tree: Mapping[str, Any]) -> None:
    """Store nested dicts / lists / tuples of tensors, numbers, strings, bools and None, atomically.

    Tensors go into the safetensors body, the structure into its metadata as JSON; dict keys that
    are not strings (an optimizer's parameter indices) and tuples survive the round trip.
    """
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(dict(tree), tensors)
    save_safetensors(path, tensors, {"format": TREE_FORMAT, "version": TREE_VERSION, "tree": structure})


def load_tree(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """Read a file written by `save_tree` (never runs code); a TicketlabError if it is not one."""
    tensors, metadata = read_safetensors(path, what)
    if metadata.get("format") != TREE_FORMAT or "tree" not in metadata:
        raise TicketlabError(f"The {what} {str(path)!r} was not written by ticketlab.")
    if metadata.get("version") != TREE_VERSION:
        raise TicketlabError(f"The {what} {str(path)!r} has format version {metadata.get('version')!r}; "
                             f"this ticketlab reads version {TREE_VERSION}.")
    try:
        tree = _decode(metadata["tree"], tensors)
    except (KeyError, TypeError, ValueError):
        raise TicketlabError(f"The {what} {str(path)!r} is damaged (its structure names missing tensors).") from None
    if not isinstance(tree, dict):
        raise TicketlabError(f"The {what} {str(path)!r} is damaged.")
    return tree


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure as PNG atomically (120 dpi, laid out tight) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
