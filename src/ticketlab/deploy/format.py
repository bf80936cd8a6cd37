"""The compact, lossless tensor encoding of exported models (format ``ticketlab-compact``, version 1).

Each tensor of a state dict is stored in the cheapest of these encodings (bytes for ``n`` positions,
``k`` of them non-zero, ``b`` bytes per value):

* ``dense``       — the tensor as is: ``n·b``. Anything that is not a float tensor, or whose
                    encoding would not be smaller, stays dense.
* ``bitmask``     — 1 bit per position (packed, little-endian within each byte) plus the ``k``
                    non-zero values in their own dtype: ``⌈n/8⌉ + k·b``. Relative to dense that
                    is ``1/(8b) + d`` (``d = k/n``): 0.53 at 50% sparsity in fp32, 0.13 at 90%.
* ``bitmask-lzma`` — the same bitmask compressed with LZMA (standard library) when that saves at
                    least a tenth: a sparse mask carries ≈ H(d) bits per position (0.47 at
                    d = 0.1, 0.14 at d = 0.02), and LZMA gets within ~1.05–1.25× of it.
* ``nm``          — N:M sparsity (at most N non-zeros in every group of M consecutive positions
                    along the input axis): each group's kept positions as their rank among the
                    C(M, N) patterns, several ranks packed per word, plus exactly N values per
                    group. 2:4 costs log₂(6)/4 ≈ 0.67 bits per position (3 groups per byte).

Positions holding ``-0.0`` where the encoding stores no value (pruning by multiplying with a mask
leaves them) are recorded in an extra ``negzero`` part (1 bit per such zero, LZMA-compressed) only
when there are any, so decoding is bit-identical in every case; ticketlab's own masks write
``+0.0`` and never need it. Every encoded tensor carries the SHA-256 of its parts, so a tampered file
is refused rather than decoded into wrong weights, and every part's size is checked before use.
The table is checked by schema before any tensor is decoded, and the bytes its shapes declare
against the bytes stored (`ticketlab.schema.check_declared`): a small file whose LZMA part claims
gigabytes of mask is refused before anything is decompressed or allocated.
"""

from __future__ import annotations

import hashlib
import lzma
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from ..bits import pack_bits, unpack_bits
from .. import schema
from ..errors import TicketlabError

FORMAT = "ticketlab-compact"
VERSION = 1
ENCODINGS = ("dense", "bitmask", "bitmask-lzma", "nm")
#: N:M patterns considered when a tensor's non-zeros fit one (largest M first is not tighter).
NM_CANDIDATES: tuple[tuple[int, int], ...] = ((1, 4), (2, 4), (2, 8), (4, 8), (8, 16))
#: LZMA must save at least this fraction of the packed bitmask to be used.
LZMA_MIN_SAVING = 0.1
_SEP = "::"
_STRING_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint8, torch.bool)}


@dataclass(frozen=True)
class Encoded:
    """One tensor's stored parts (name suffix -> tensor) and its metadata entry."""

    parts: dict[str, torch.Tensor]
    info: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.parts.values())


# --- bits and bytes -------------------------------------------------------------------------------
def negative_zeros(tensor: torch.Tensor) -> torch.Tensor:
    """Bool tensor: True where the element is ``-0.0`` (a zero whose sign bit is set)."""
    return (tensor == 0) & torch.signbit(tensor)


def _digest(parts: dict[str, torch.Tensor]) -> str:
    hasher = hashlib.sha256()
    for key in sorted(parts):
        hasher.update(key.encode())
        hasher.update(parts[key].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str, where: str) -> torch.dtype:
    if name not in _STRING_DTYPES:
        raise TicketlabError(f"{where} declares an unknown dtype {name!r}.")
    return _STRING_DTYPES[name]


# --- N:M pattern ranks --------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _nm_tables(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(patterns (P, m) bool in rank order, code -> rank lookup over all 2**m bit codes (-1 if not n bits))."""
    patterns, codes = [], []
    for code in range(1 << m):
        if bin(code).count("1") == n:
            codes.append(code)
    codes.sort(key=lambda c: [i for i in range(m) if c >> i & 1][::-1])  # colex order = combinatorial rank
    for code in codes:
        patterns.append([(code >> i) & 1 == 1 for i in range(m)])
    lookup = torch.full((1 << m,), -1, dtype=torch.int64)
    lookup[torch.tensor(codes)] = torch.arange(len(codes))
    return torch.tensor(patterns, dtype=torch.bool), lookup


def _word_layout(patterns: int) -> tuple[int, int]:
    """(bytes per word, ranks per word) that minimise bits per group, words fitting a signed int64."""
    best = None
    for word_bytes in (1, 2, 4, 8):
        bits = 8 * word_bytes - (1 if word_bytes == 8 else 0)
        per_word = int(bits / math.log2(patterns)) if patterns > 1 else 64
        while per_word > 0 and patterns ** per_word > (1 << bits):
            per_word -= 1
        if per_word and (best is None or word_bytes / per_word < best[0] / best[1]):
            best = (word_bytes, per_word)
    assert best is not None
    return best


def _fill_to_n(groups: torch.Tensor, n: int) -> torch.Tensor:
    """Groups (G, m) bool with ≤ n True each -> exactly n True (the lowest free positions added)."""
    missing = n - groups.sum(dim=1, keepdim=True)
    free_rank = torch.cumsum((~groups).to(torch.int64), dim=1)
    return groups | ((~groups) & (free_rank <= missing))


def _nm_axis_view(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    """The tensor with the N:M axis last, as a 2-D (rows, size) view or copy."""
    moved = tensor if axis == tensor.dim() - 1 else tensor.movedim(axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def _nm_fit(flags: torch.Tensor) -> tuple[int, int, int] | None:
    """The tightest (n, m, axis) whose groups hold every non-zero of ``flags``, if any."""
    if flags.dim() < 2:
        return None
    best = None
    for axis in (flags.dim() - 1, 0):
        rows = _nm_axis_view(flags, axis)
        for n, m in NM_CANDIDATES:
            if rows.shape[1] % m:
                continue
            if int(rows.reshape(-1, m).sum(dim=1).max()) <= n:
                bits = math.log2(math.comb(m, n)) / m + n / m * 64  # rough cost ranking (values dominate)
                if best is None or bits < best[0]:
                    best = (bits, n, m, axis)
    return None if best is None else best[1:]


def _encode_nm(tensor: torch.Tensor, flags: torch.Tensor, n: int, m: int, axis: int) -> Encoded:
    """Ranks of each group's kept positions, packed ``per_word`` to a little-endian word, and the values
    of those positions in row-major order of ``tensor`` (the order `decode_tensor` fills them in)."""
    groups = _fill_to_n(_nm_axis_view(flags, axis).reshape(-1, m), n)
    codes = (groups.to(torch.int64) << torch.arange(m)).sum(dim=1)
    patterns, lookup = _nm_tables(n, m)
    ranks = lookup[codes]
    word_bytes, per_word = _word_layout(len(patterns))
    pad = (-ranks.numel()) % per_word
    ranks = torch.cat([ranks, ranks.new_zeros(pad)]).view(-1, per_word)
    words = (ranks * (len(patterns) ** torch.arange(per_word, dtype=torch.int64))).sum(dim=1)
    index = ((words.view(-1, 1) >> (8 * torch.arange(word_bytes))) & 0xFF).to(torch.uint8).reshape(-1)
    stored = _nm_positions(index, n, m, axis, list(tensor.shape), word_bytes, per_word)
    info = {"encoding": "nm", "n": n, "m": m, "axis": axis, "word_bytes": word_bytes, "per_word": per_word}
    return Encoded({"index": index, "values": tensor[stored].contiguous()}, info)


def _nm_positions(index: torch.Tensor, n: int, m: int, axis: int, shape: list[int], word_bytes: int,
                  per_word: int) -> torch.Tensor:
    """Bool (shape): the positions whose values an N:M ``index`` stores."""
    patterns, _ = _nm_tables(n, m)
    groups = math.prod(shape) // m
    packed = index.view(-1, word_bytes).to(torch.int64)
    word = (packed << (8 * torch.arange(word_bytes))).sum(dim=1)
    ranks = (word.view(-1, 1) // (len(patterns) ** torch.arange(per_word, dtype=torch.int64))) % len(patterns)
    keep = patterns[ranks.reshape(-1)[:groups]]              # (groups, m), groups along the last axis
    moved = list(shape[:axis]) + list(shape[axis + 1:]) + [shape[axis]]
    result = keep.reshape(moved)
    return result if axis == len(shape) - 1 else result.movedim(-1, axis).contiguous()


def _check_nm(info: dict[str, Any], shape: list[int], parts: dict[str, torch.Tensor], where: str) -> None:
    n, m, axis, word_bytes, per_word = (info.get(k) for k in ("n", "m", "axis", "word_bytes", "per_word"))
    if not all(isinstance(v, int) for v in (n, m, axis, word_bytes, per_word)):
        raise TicketlabError(f"{where} has an invalid N:M layout.")
    if not (0 < n < m <= 16) or not 0 <= axis < len(shape) or shape[axis] % m:
        raise TicketlabError(f"{where} has an invalid N:M layout.")
    if _word_layout(math.comb(m, n)) != (word_bytes, per_word):
        raise TicketlabError(f"{where} has an invalid N:M word layout.")
    groups = math.prod(shape) // m
    index, values = parts["index"], parts["values"]
    if index.dtype != torch.uint8 or index.numel() != math.ceil(groups / per_word) * word_bytes \
            or values.numel() != groups * n:
        raise TicketlabError(f"{where} has N:M parts of the wrong size (truncated or tampered).")


# --- one tensor ---------------------------------------------------------------------------------------
def encode_tensor(tensor: torch.Tensor) -> Encoded:
    """The cheapest lossless encoding of ``tensor`` (see the module docstring)."""
    tensor = tensor.detach().to("cpu").contiguous()
    shape, dtype = list(tensor.shape), tensor.dtype
    base = {"shape": shape, "dtype": dtype_name(dtype)}
    dense = Encoded({"dense": tensor}, {"encoding": "dense", **base})
    if not tensor.is_floating_point() or tensor.numel() < 64:
        return _sealed(dense)
    flags = tensor != 0
    kept = int(flags.sum())
    candidates = [dense]
    mask = pack_bits(flags)
    values = tensor.reshape(-1)[flags.reshape(-1)].contiguous()
    candidates.append(Encoded({"mask": mask, "values": values}, {"encoding": "bitmask", **base}))
    if kept < 0.35 * tensor.numel():
        squeezed = _compress(mask)
        if squeezed.numel() <= (1 - LZMA_MIN_SAVING) * mask.numel():
            candidates.append(Encoded({"mask": squeezed, "values": values}, {"encoding": "bitmask-lzma", **base}))
    fit = _nm_fit(flags)
    if fit is not None:
        nm = _encode_nm(tensor, flags, *fit)
        candidates.append(Encoded(nm.parts, {**nm.info, **base}))
    candidates = [_with_negative_zeros(c, tensor) for c in candidates]
    return _sealed(min(candidates, key=lambda e: e.nbytes))


def _compress(packed: torch.Tensor) -> torch.Tensor:
    return torch.frombuffer(bytearray(lzma.compress(packed.numpy().tobytes(), preset=6)), dtype=torch.uint8)


def _with_negative_zeros(encoded: Encoded, tensor: torch.Tensor) -> Encoded:
    """Add the ``negzero`` part when some position the encoding leaves implicit holds ``-0.0``."""
    if encoded.info["encoding"] == "dense":
        return encoded
    implicit = ~_stored_positions(encoded, tensor.shape)
    negative = negative_zeros(tensor).reshape(-1)[implicit.reshape(-1)]
    if not bool(negative.any()):
        return encoded
    return Encoded({**encoded.parts, "negzero": _compress(pack_bits(negative))}, encoded.info)


def _stored_positions(encoded: Encoded, shape: torch.Size) -> torch.Tensor:
    """Bool (shape) of the positions whose values the encoding stores."""
    info = encoded.info
    if info["encoding"] == "nm":
        n, m, axis = info["n"], info["m"], info["axis"]
        return _nm_positions(encoded.parts["index"], n, m, axis, list(shape), info["word_bytes"], info["per_word"])
    mask = encoded.parts["mask"]
    if info["encoding"] == "bitmask-lzma":
        mask = _decompress(mask, math.ceil(math.prod(shape) / 8), "a tensor")
    return unpack_bits(mask, math.prod(shape)).view(shape)


def _sealed(encoded: Encoded) -> Encoded:
    return Encoded(encoded.parts, {**encoded.info, "nbytes": encoded.nbytes, "sha256": _digest(encoded.parts)})


def decode_tensor(parts: dict[str, torch.Tensor], info: dict[str, Any], where: str = "a tensor") -> torch.Tensor:
    """The tensor ``encode_tensor`` encoded, bit for bit; a TicketlabError if the parts were altered."""
    encoding = info.get("encoding")
    if encoding not in ENCODINGS:
        raise TicketlabError(f"{where} uses an unknown encoding {encoding!r}.")
    shape = info.get("shape")
    if schema.problem(shape, _SHAPE) is not None:
        raise TicketlabError(f"{where} has an invalid shape.")
    dtype = dtype_from_name(str(info.get("dtype")), where)
    schema.check_declared(decoded_bytes(info), _stored_bytes(parts), where, "a tensor")
    if info.get("sha256") != _digest(parts):
        raise TicketlabError(f"{where} does not match its checksum (the file is corrupt or was tampered with).")
    if encoding == "dense":
        tensor = parts["dense"]
        if tensor.dtype != dtype or list(tensor.shape) != shape:
            raise TicketlabError(f"{where} is stored with the wrong shape or dtype.")
        return tensor
    numel = math.prod(shape)
    values = parts["values"]
    if encoding == "nm":
        _check_nm(info, shape, parts, where)
        stored = _nm_positions(parts["index"], info["n"], info["m"], info["axis"], shape, info["word_bytes"],
                               info["per_word"])
    else:
        mask = parts["mask"]
        if mask.dtype != torch.uint8:
            raise TicketlabError(f"{where} has a mask of the wrong dtype (tampered).")
        if encoding == "bitmask-lzma":
            mask = _decompress(mask, math.ceil(numel / 8), where)
        if mask.numel() != math.ceil(numel / 8):
            raise TicketlabError(f"{where} has a mask of the wrong size (truncated or tampered).")
        stored = unpack_bits(mask, numel).view(shape)
    if values.dtype != dtype or int(stored.sum()) != values.numel():
        raise TicketlabError(f"{where} has {values.numel()} values for {int(stored.sum())} stored positions.")
    out = torch.zeros(shape, dtype=dtype)
    out[stored] = values
    if "negzero" in parts:
        implicit = ~stored
        count = int(implicit.sum())
        negative = unpack_bits(_decompress(parts["negzero"], math.ceil(count / 8), where), count)
        out[implicit] = torch.where(negative, torch.tensor(-0.0, dtype=dtype), torch.tensor(0.0, dtype=dtype))
    return out


def _decompress(packed: torch.Tensor, expected: int, where: str) -> torch.Tensor:
    """LZMA-decompress at most ``expected`` bytes (a crafted stream cannot inflate beyond it)."""
    if packed.dtype != torch.uint8:
        raise TicketlabError(f"{where} holds a compressed part of the wrong dtype.")
    decompressor = lzma.LZMADecompressor()
    try:
        raw = decompressor.decompress(packed.numpy().tobytes(), max_length=expected)
    except lzma.LZMAError:
        raise TicketlabError(f"{where} holds a damaged compressed part.") from None
    if len(raw) != expected or not decompressor.eof:
        raise TicketlabError(f"{where} holds a compressed part of the wrong size.")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)


# --- whole state dicts ---------------------------------------------------------------------------------
def encode_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor encoded: (safetensors tensors ``NAME::PART``, metadata ``{"tensors": {NAME: info}}``)."""
    tensors: dict[str, torch.Tensor] = {}
    infos: dict[str, Any] = {}
    for name, value in state.items():
        if _SEP in name:
            raise TicketlabError(f"Tensor name {name!r} contains {_SEP!r}, which the compact format reserves.")
        encoded = encode_tensor(value)
        infos[name] = encoded.info
        for part, tensor in encoded.parts.items():
            tensors[f"{name}{_SEP}{part}"] = tensor
    return tensors, {"format": FORMAT, "version": VERSION, "tensors": infos}


def decode_state(tensors: dict[str, torch.Tensor], metadata: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The state dict `encode_state` encoded (order preserved); TicketlabError naming what is wrong."""
    if metadata.get("format") != FORMAT:
        raise TicketlabError(f"{where} is not a ticketlab compact weights file.")
    if metadata.get("version") != VERSION:
        raise TicketlabError(f"{where} has format version {metadata.get('version')!r}; this ticketlab reads "
                             f"version {VERSION} (upgrade ticketlab to read newer files).")
    infos = metadata.get("tensors")
    if not isinstance(infos, dict):
        raise TicketlabError(f"{where} has no tensor table.")
    problem = schema.problem(infos, _TABLE)
    if problem is not None:
        raise TicketlabError(f"{where} has a malformed tensor table ({problem}).")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, part = key.rpartition(_SEP)
        parts.setdefault(name, {})[part] = tensor
    unknown = sorted(set(parts) - set(infos))
    if unknown:
        raise TicketlabError(f"{where} holds tensor {unknown[0]!r}, which its table does not describe.")
    schema.check_declared(sum(decoded_bytes(info) for info in infos.values()), _stored_bytes(tensors), where,
                          "tensors")
    state = {}
    for name, info in infos.items():
        if not isinstance(info, dict) or name not in parts:
            raise TicketlabError(f"{where} lacks the data of tensor {name!r} (truncated or tampered).")
        expected = _expected_parts(info.get("encoding"))
        if set(parts[name]) - {"negzero"} != expected or ("negzero" in parts[name] and expected == {"dense"}):
            raise TicketlabError(f"{where} has the wrong parts for tensor {name!r}.")
        state[name] = decode_tensor(parts[name], info, f"Tensor {name!r} of {where}")
    return state


#: A declared shape: at most 32 dimensions (torch's own limit is 64), none beyond 2**48.
_SHAPE = schema.list_of(schema.integer(0, 2**48), max_items=32)
#: The fields of each tensor's entry that are used before its parts are checked. Encoding and
#: dtype are plain strings here: `decode_tensor` names an unknown one in its own sentence.
_TABLE = schema.dict_of(schema.record(
    {"encoding": schema.text(max_length=100), "shape": _SHAPE, "dtype": schema.text(max_length=100)},
    {"sha256": schema.text(max_length=100), **{k: schema.integer(0, 64) for k in ("n", "m", "axis", "word_bytes",
                                                                                  "per_word")}}), label="tensor")


def decoded_bytes(info: dict[str, Any]) -> int:
    """Bytes of the tensor an entry declares (its shape times its dtype's size; an unknown dtype
    counts 8 bytes per element), computed without building anything."""
    name = info.get("dtype")
    dtype = _STRING_DTYPES.get(name) if isinstance(name, str) else None
    size = torch.empty((), dtype=dtype).element_size() if dtype is not None else 8
    return math.prod(info["shape"]) * size


def _stored_bytes(parts: dict[str, torch.Tensor]) -> int:
    """Bytes the stored parts really hold (what was read from the file)."""
    return sum(t.numel() * t.element_size() for t in parts.values())


def _expected_parts(encoding: Any) -> set[str]:
    return {"dense": {"dense"}, "bitmask": {"mask", "values"}, "bitmask-lzma": {"mask", "values"},
            "nm": {"index", "values"}}.get(encoding, set())
