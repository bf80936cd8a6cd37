"""Explicit, named random streams.

Every source of randomness gets its own seed derived from the run's seed and a label, e.g.
``derive_seed(0, "reinit", 3)`` for the re-initialisation control of round 3. Streams are thus
independent of each other and of the order in which work happens (which resuming changes).
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed determined by ``seed`` and ``labels`` (stable across Python versions)."""
    text = "/".join([str(seed), *map(str, labels)]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *labels: object) -> torch.Generator:
    """A CPU `torch.Generator` seeded with ``derive_seed(seed, *labels)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *labels))
