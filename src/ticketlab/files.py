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

Files are read back here too, and a file someone hands us may be crafted: `read_json`,
`read_safetensors` and `safetensors_shapes` read regular files only (a FIFO would block forever, a
device never ends), never open a path that resolves outside the directory it was found in
(``root``: a symbolic link in a run or export directory pointing elsewhere), bound JSON nesting
before parsing (a file nested 100,000 deep would exhaust the stack) and, where the caller asks,
refuse NaN and Infinity (ticketlab never writes them). Each refusal is one sentence naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import TicketlabError, first_line

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


# --- reading files someone may have crafted --------------------------------------------------------
#: Deepest nesting of arrays and objects `parse_json` accepts. ticketlab's own files nest at most
#: about 8 levels (a checkpoint's optimizer state); Python's parser recurses once per level.
MAX_JSON_DEPTH = 100
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True if ``path``, every symbolic link followed, lies in the directory ``root`` (or is it)."""
    resolved, top = Path(path).resolve(), Path(root).resolve()
    return resolved == top or top in resolved.parents


def check_inside(path: str | os.PathLike, root: str | os.PathLike | None, what: str = "file") -> Path:
    """``path`` unless ``root`` is given and ``path`` resolves outside it: then a TicketlabError.

    A run or export directory is read as a unit; a symbolic link in it that points elsewhere (to
    another user's file, ``/etc``, a device) would make ticketlab read what the directory's author
    chose, so it is refused rather than followed.
    """
    path = Path(path)
    if root is not None and not inside(path, root):
        raise TicketlabError(f"The {what} {str(path)!r} resolves to {str(path.resolve())!r}, outside "
                             f"{str(root)!r}; ticketlab reads only files inside the directory it is given.")
    return path


def regular_file(path: str | os.PathLike, what: str = "file", *, root: str | os.PathLike | None = None) -> Path:
    """``path`` if it is a regular file (inside ``root`` when given), without opening it; else a
    TicketlabError: missing, a directory, or a FIFO / device / socket, whose reading could block
    forever or never end."""
    path = check_inside(path, root, what)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise TicketlabError(f"The {what} {str(path)!r} does not exist.") from None
    except OSError as err:
        raise TicketlabError(f"Cannot read the {what} {str(path)!r} ({err.strerror or err}).") from None
    if not stat.S_ISREG(mode):
        raise TicketlabError(f"The {what} {str(path)!r} is {_kind_of(mode)}, not a regular file; ticketlab "
                             "reads regular files only.")
    return path


def _kind_of(mode: int) -> str:
    """What a non-regular file is, in words (for `regular_file`'s sentence)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def read_bytes(path: str | os.PathLike, what: str = "file", *, root: str | os.PathLike | None = None) -> bytes:
    """The bytes of a regular file (see `regular_file`). The file is opened non-blocking and checked
    on its descriptor, so a FIFO swapped in after the check is refused too, never waited on."""
    path = check_inside(path, root, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise TicketlabError(f"The {what} {str(path)!r} does not exist.") from None
    except OSError as err:
        raise TicketlabError(f"Cannot read the {what} {str(path)!r} ({err.strerror or err}).") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise TicketlabError(f"The {what} {str(path)!r} is {_kind_of(mode)}, not a regular file; ticketlab "
                                 "reads regular files only.")
        try:
            return handle.read()
        except OSError as err:
            raise TicketlabError(f"Cannot read the {what} {str(path)!r} ({err.strerror or err}).") from None


#: The most entries `check_tree` walks: an export or model directory holds a few dozen files.
MAX_TREE_ENTRIES = 10_000


def check_tree(root: str | os.PathLike, what: str = "directory", *, confined: bool = True) -> None:
    """Refuse a directory that holds anything but regular files and directories (a FIFO, device or
    socket: reading it would block or never end) or, if ``confined``, a link that resolves outside
    it. For the small directories read as a whole by other libraries (transformers opens a model
    directory's files itself); run directories are checked file by file as they are read."""
    root = Path(root)
    seen = 0
    for folder, directories, names in os.walk(root):
        for name in [*directories, *names]:
            seen += 1
            if seen > MAX_TREE_ENTRIES:
                raise TicketlabError(f"The {what} {str(root)!r} holds more than {MAX_TREE_ENTRIES} files; it is not "
                                     "a model directory.")
            path = Path(folder) / name
            if confined and path.is_symlink():
                check_inside(path, root, "file")
            if path.exists() and (name in names or path.is_symlink()):
                _check_kind(path)


def _check_kind(path: Path) -> None:
    """A TicketlabError unless ``path`` (links followed) is a regular file or a directory."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise TicketlabError(f"Cannot read {str(path)!r} ({err.strerror or err}).") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise TicketlabError(f"The file {str(path)!r} is {_kind_of(mode)}, not a regular file; ticketlab reads "
                             "regular files only.")


def json_depth_problem(text: str) -> str | None:
    """Why ``text`` nests too deep to parse (more than `MAX_JSON_DEPTH` arrays / objects), or None.

    Strings are blanked first (brackets inside them do not nest); the scan stops at the first
    level too deep, so a file of 100,000 opening brackets costs 101 steps.
    """
    depth = 0
    for char in _NOT_BRACKET.sub("", _JSON_STRING.sub('""', text)):
        depth += 1 if char in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return f"nested deeper than {MAX_JSON_DEPTH} levels"
    return None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"it holds {name}, which ticketlab never writes")


def parse_json(text: str, where: str, *, finite: bool = False) -> Any:
    """Parse JSON ``text`` (nesting bounded before parsing); ``finite``: refuse NaN, Infinity and
    numbers beyond float range. Any problem is a TicketlabError naming ``where``."""
    problem = json_depth_problem(text)
    if problem is not None:
        raise TicketlabError(f"Cannot read {where} as JSON ({problem}).")
    options: dict[str, Any] = {"parse_constant": _no_constant, "parse_float": _finite_float} if finite else {}
    try:
        return json.loads(text, **options)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, huge integers, refused constants
        raise TicketlabError(f"Cannot read {where} as JSON ({first_line(err)}).") from None


def read_json(path: str | os.PathLike, *, root: str | os.PathLike | None = None, finite: bool = False) -> Any:
    """Parse a JSON file: a regular file (inside ``root`` when given; see `read_bytes`), nested at
    most `MAX_JSON_DEPTH` deep; ``finite`` refuses NaN and Infinity (for the files ticketlab writes).
    Anything else is a TicketlabError naming the file."""
    data = read_bytes(path, "file", root=root)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TicketlabError(f"Cannot read {str(path)!r} as JSON ({err.reason} at byte {err.start}).") from None
    return parse_json(text, repr(str(path)), finite=finite)


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
    TicketlabError otherwise, with ``out`` left as it was). The temporary directory is the one of
    `temporary_directory`: a killed writer's is removed by the next one.
    """
    out = Path(out)
    _check_free(out)
    with temporary_directory(out) as tmp:
        try:
            yield tmp
            follow_umask(tmp)
            _check_free(out)
            if out.is_dir():
                out.rmdir()
            os.replace(tmp, out)
        except OSError as err:
            raise TicketlabError(f"Cannot write {str(out)!r} ({err.strerror or err}); nothing was left behind.") from None


@contextlib.contextmanager
def temporary_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a new, empty temporary sibling of ``out`` (``.OUT.<pid>-<8 hex>.tmp``), deleted when the
    block ends unless it was renamed away. Stale siblings of killed writers are deleted first;
    while the block runs the directory is flock-ed, so a concurrent writer's
    `remove_stale_siblings` leaves it alone."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(out)
    tmp = _temporary_name(out, with_pid=True)
    try:
        os.mkdir(tmp, 0o777)
    except OSError as err:
        raise TicketlabError(f"Cannot write beside {str(out)!r} ({err.strerror or err}); nothing was changed.") from None
    fd = _lock_directory(tmp)
    try:
        yield tmp
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


def read_safetensors(path: str | os.PathLike, what: str = "file", *,
                     root: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and ticketlab metadata of a safetensors file (a regular file, inside ``root`` when
    given: `regular_file`); a TicketlabError naming it if unreadable. safetensors checks that every
    tensor's shape and offsets lie within the file, so nothing larger than the file is allocated."""
    from safetensors import safe_open

    path = regular_file(path, what, root=root)
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    except Exception as err:  # safetensors raises several types for damaged files
        raise TicketlabError(f"The {what} {str(path)!r} is not a readable safetensors file ({_reason(err)}).") from None
    metadata = parse_json(raw, f"the metadata of {str(path)!r}") if raw is not None else {}
    if not isinstance(metadata, dict):
        raise TicketlabError(f"The {what} {str(path)!r} has malformed metadata.")
    return tensors, metadata


def safetensors_shapes(path: str | os.PathLike, what: str = "file", *,
                       root: str | os.PathLike | None = None) -> dict[str, list[int]]:
    """The shape of every tensor in a safetensors file, read from its header only (no tensor data
    is loaded); the same checks and sentences as `read_safetensors`."""
    from safetensors import safe_open

    path = regular_file(path, what, root=root)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as err:  # safetensors raises several types for damaged files
        raise TicketlabError(f"The {what} {str(path)!r} is not a readable safetensors file ({_reason(err)}).") from None


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
