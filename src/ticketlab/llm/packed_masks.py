"""The keep masks of a streamed model, kept on disk while the model is pruned.

A bool mask of every weight costs a quarter of an fp32 model (an eighth of a bf16 one); even packed
eight to a byte it is 1/16 of a bf16 model — for a 7B model as much as two of its blocks. So each
layer's mask is packed (`ticketlab.bits`) and appended to a scratch file in the output's temporary
directory as soon as it is chosen; memory holds only (offset, length, shape, kept count) per
layer. At the end `save` writes ``masks.safetensors`` exactly as `ticketlab.masks.Mask.save` would
(bool tensors, sorted names, the same metadata), unpacking one layer at a time, and deletes the
scratch file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..bits import pack_bits, unpack_bits
from ..errors import TicketlabError
from ..files import METADATA_KEY, atomic_path

#: The scratch file's name inside the output's temporary directory (removed by `PackedMasks.save`).
MASK_SPILL_NAME = ".masks.bits.tmp"


class PackedMasks:
    """Parameter name → keep mask, packed on disk. Offers what the report and the writer use of
    `ticketlab.masks.Mask`: ``num_kept``, ``num_total``, ``density`` and ``save``."""

    def __init__(self, spill: str | Path):
        self.spill = Path(spill)
        self.entries: dict[str, tuple[int, int, tuple[int, ...], int]] = {}   # offset, bytes, shape, kept
        self._end = 0

    def add(self, name: str, keep: torch.Tensor) -> None:
        """Pack ``keep`` (bool, any shape, any device) and append it to the scratch file."""
        flags = keep.detach().to("cpu", torch.bool)
        data = pack_bits(flags).numpy().tobytes()
        with self.spill.open("ab") as handle:
            handle.write(data)
        self.entries[name] = (self._end, len(data), tuple(flags.shape), int(flags.sum()))
        self._end += len(data)

    def flags(self, name: str) -> torch.Tensor:
        """One layer's mask, unpacked: bool tensor of its shape."""
        offset, length, shape, _ = self.entries[name]
        with self.spill.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
        if len(data) != length:
            raise TicketlabError(f"The mask scratch file {str(self.spill)!r} was truncated while pruning.")
        packed = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return unpack_bits(packed, torch.Size(shape).numel()).view(shape)

    def num_kept(self) -> int:
        return sum(kept for _, _, _, kept in self.entries.values())

    def num_total(self) -> int:
        return sum(torch.Size(shape).numel() for _, _, shape, _ in self.entries.values())

    def density(self) -> float:
        total = self.num_total()
        return self.num_kept() / total if total else 1.0

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """Write a safetensors file of bool tensors (as `Mask.save` does), then drop the scratch file."""
        names = sorted(self.entries)
        header: dict[str, Any] = {"__metadata__": {METADATA_KEY: json.dumps(
            {"format": "ticketlab-mask", "density": round(self.density(), 8), **dict(metadata or {})},
            sort_keys=True)}}
        offset = 0
        for name in names:
            size = torch.Size(self.entries[name][2]).numel()
            header[name] = {"dtype": "BOOL", "shape": list(self.entries[name][2]), "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * ((-len(text)) % 8)
        with atomic_path(path) as tmp, tmp.open("wb") as handle:
            handle.write(len(text).to_bytes(8, "little") + text)
            for name in names:
                handle.write(self.flags(name).to(torch.uint8).numpy().tobytes())
        self.spill.unlink(missing_ok=True)


__all__ = ["MASK_SPILL_NAME", "PackedMasks"]
