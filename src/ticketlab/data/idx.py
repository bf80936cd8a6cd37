"""A reader for the IDX format of the original MNIST distribution (optionally gzip-compressed).

Layout: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions ``n``, then ``n``
big-endian uint32 sizes, then the values in C order, big-endian. We check every part of that
header against the file length so a truncated or wrong file fails with one clear sentence
instead of a reshape error deep inside NumPy.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import TicketlabError

TYPE_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when the name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise TicketlabError(f"Cannot read IDX file {path}: {err}.") from None


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """The array stored in IDX file ``path`` (native byte order), which must have ``ndim`` dimensions."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in TYPE_CODES:
        raise TicketlabError(f"{path} is not an IDX file (bad magic number); re-download it.")
    if raw[3] != ndim:
        raise TicketlabError(f"{path} holds a {raw[3]}-dimensional IDX array where {ndim} dimensions were expected.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise TicketlabError(f"{path} is truncated inside its IDX header; re-download it.")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(TYPE_CODES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise TicketlabError(f"{path} has {len(raw)} bytes but its IDX header {shape} implies {expected}; "
                             f"the file is truncated or corrupt, re-download it.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
