"""``digits``: scikit-learn's 1,797 handwritten digits, 8x8 pixels with values 0..16.

This is the data behind ``sklearn.datasets.load_digits``. We read its file
``sklearn/datasets/data/digits.csv.gz`` (64 pixels then the label per row) directly, because
importing ``sklearn.datasets`` takes over a second; if the file is not where we expect (a future
layout change) we fall back to ``load_digits`` itself. 20% (360) is held out as test after a
seeded shuffle; the rest is split into train / validation.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ..errors import TicketlabError
from .packages import missing_package, package_file
from .splits import DataSplits, build_splits, carve

NAME = "digits"
RELATIVE = "datasets/data/digits.csv.gz"
TEST_FRACTION = 0.2


@lru_cache(maxsize=1)
def _read() -> tuple[np.ndarray, np.ndarray, str]:
    """Pixels uint8 ``(1797, 64)`` in 0..16, labels int64 ``(1797,)`` and where they came from."""
    path = package_file("sklearn", RELATIVE, NAME)
    if path is not None:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        if table.ndim != 2 or table.shape[1] != 65:
            raise TicketlabError(f"Expected 65 columns (64 pixels and a label) in {path}, got shape {table.shape}.")
        pixels, labels, source = table[:, :64], table[:, 64], f"scikit-learn package file {path}"
    else:  # pragma: no cover - only on an unexpected scikit-learn layout
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise missing_package("sklearn", NAME) from None
        bunch = load_digits()
        pixels, labels, source = bunch.data, bunch.target, "sklearn.datasets.load_digits()"
    pixels, labels = pixels.astype(np.uint8), labels.astype(np.int64)
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels, source


def load_digits(root=None, *, val_fraction: float, split_seed: int) -> DataSplits:
    """360 test / the rest train+val; inputs ``(1, 8, 8)`` scaled by 1/16, 10 classes. ``root`` is unused."""
    pixels, labels, source = _read()
    x = torch.from_numpy(pixels.copy()).view(-1, 1, 8, 8)
    y = torch.from_numpy(labels.copy())
    n_test = math.ceil(TEST_FRACTION * len(y))  # 360 of 1,797, as train_test_split rounds
    (test_x, test_y), (pool_x, pool_y) = carve(x, y, n_test, split_seed)
    return build_splits(NAME, pool_x, pool_y, test_x, test_y, num_classes=10, scale=16.0,
                        source=source, val_fraction=val_fraction, split_seed=split_seed)
