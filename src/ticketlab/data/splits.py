"""The split container and the shared shuffle / hold-out / standardise logic.

Every loader in this package ends in `build_splits`, so all datasets share one definition of
"validation data" (held out from the *training* pool, never from test), one seeded shuffle
and one normalisation (statistics from the training split only, so no information leaks from
validation or test into the inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import TicketlabError


@dataclass(frozen=True)
class DataSplits:
    """A dataset cut into train / validation / test tensors, ready for a model.

    ``*_x`` are contiguous float32 of shape ``(N, *input_shape)``, standardised with the training
    split's per-channel mean and std; ``*_y`` are int64 class indices of shape ``(N,)`` in
    ``[0, num_classes)``. The validation split is held out from the training data (never from test),
    so model selection on it leaves the test score unbiased (it is empty when ``val_fraction`` is 0).
    ``source`` is one line naming the file or directory the data came from.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    source: str


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry; ``needs_root`` marks datasets read from a user directory (``--data-dir``)."""

    name: str
    description: str
    needs_root: bool


def check_split_args(val_fraction: float, split_seed: int) -> None:
    """Reject a validation fraction outside [0, 1) or a non-integer seed, each in one sentence."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or math.isnan(val_fraction) or not 0 <= val_fraction < 1:
        raise TicketlabError(f"The validation fraction must be a number in [0, 1), got {val_fraction!r}.")
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)):
        raise TicketlabError(f"The split seed must be an integer, got {split_seed!r}.")


def permutation(n: int, split_seed: int) -> torch.Tensor:
    """A permutation of ``range(n)`` (int64, shape ``(n,)``) from a private generator: same seed, same order."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed)))


def carve(x: torch.Tensor, y: torch.Tensor, n_first: int, split_seed: int):
    """Shuffle ``(x, y)`` with ``split_seed`` and cut off the first ``n_first`` examples.

    Returns ``((x_first, y_first), (x_rest, y_rest))``; used to take a test split from a dataset that
    ships without one. Source files are often sorted by class, hence the shuffle.
    """
    order = permutation(len(y), split_seed)
    first, rest = order[:n_first], order[n_first:]
    return (x[first], y[first]), (x[rest], y[rest])


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> None:
    """In place: subtract the train mean and divide by the train std, per channel for images
    ``(N, C, ...)`` and one scalar for 1-D examples ``(N, L)``. A constant channel keeps std 1."""
    dims = [0, *range(2, train.dim())] if train.dim() > 2 else list(range(train.dim()))
    std, mean = torch.std_mean(train, dim=dims, keepdim=True, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for t in (train, *others):
        t.sub_(mean).div_(std)


def _as_float(x: torch.Tensor, scale: float) -> torch.Tensor:
    """A fresh contiguous float32 copy of ``x`` divided by ``scale`` (uint8 pixels / 255 -> [0, 1])."""
    out = x.to(torch.float32, copy=True).contiguous()
    return out.div_(scale) if scale != 1 else out


def build_splits(name: str, pool_x: torch.Tensor, pool_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, *, num_classes: int, source: str, val_fraction: float,
                 split_seed: int, scale: float = 1.0) -> DataSplits:
    """Hold out ``val_fraction`` of the training pool (seeded shuffle), divide pixels by ``scale``
    (e.g. 255, giving [0, 1]) and standardise every split with training-split statistics.

    ``pool_x`` / ``test_x`` have shape ``(N, *input_shape)``, any numeric dtype; labels any integer
    dtype of shape ``(N,)``.
    """
    check_split_args(val_fraction, split_seed)
    n_val = int(round(val_fraction * len(pool_y)))
    if n_val >= len(pool_y):
        raise TicketlabError(f"A validation fraction of {val_fraction} leaves no training examples "
                             f"out of {len(pool_y)} in dataset '{name}'.")
    (val_x, val_y), (train_x, train_y) = carve(pool_x, pool_y, n_val, split_seed)
    train_x, val_x, test_x = (_as_float(t, scale) for t in (train_x, val_x, test_x))
    _standardise(train_x, val_x, test_x)
    return DataSplits(
        name=name,
        train_x=train_x, train_y=train_y.long().contiguous(),
        val_x=val_x, val_y=val_y.long().contiguous(),
        test_x=test_x, test_y=test_y.long().contiguous(),
        input_shape=tuple(train_x.shape[1:]), num_classes=num_classes, source=source,
    )
