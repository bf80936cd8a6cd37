"""Bool tensors packed eight flags to a byte (little-endian bit order), the layout of every bitmask
ticketlab writes: deployed weights (`ticketlab.deploy.format`) and the masks of a streamed model
(`ticketlab.llm.packed_masks`)."""

from __future__ import annotations

import torch

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """Bool tensor (any shape, n elements) -> uint8 (⌈n/8⌉,): bit i of byte j is flags[8j + i]."""
    flat = flags.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of `pack_bits`: uint8 (⌈n/8⌉,) -> bool (n,)."""
    bits = (packed.view(-1, 1) & _BIT_WEIGHTS.to(packed.device)) != 0
    return bits.reshape(-1)[:n]


__all__ = ["pack_bits", "unpack_bits"]
