"""``mnist``: the full MNIST distribution (60,000 train / 10,000 test) read from a local directory.

Nothing is downloaded: the user points ``root`` (``--data-dir``) at a folder holding the four
IDX files, each optionally ``.gz`` -- either directly or under ``MNIST/raw/`` as torchvision lays
them out. The validation split is held out from the 60,000 training images with a seeded shuffle.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import TicketlabError
from .idx import read_idx
from .splits import DataSplits, build_splits

NAME = "mnist"
FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
SUBDIRS = (".", "MNIST/raw")
NEEDS = ("MNIST needs train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
         "t10k-labels-idx1-ubyte (each optionally .gz) in DIR or DIR/MNIST/raw")


def _find(root: Path, stem: str) -> Path | None:
    """The first existing file ``stem`` or ``stem.gz`` (also Kaggle's ``train-images.idx3-ubyte``)."""
    names = [stem, stem.replace("-idx", ".idx")]
    for sub in SUBDIRS:
        for name in names:
            for suffix in ("", ".gz"):
                path = root / sub / (name + suffix)
                if path.is_file():
                    return path
    return None


def find_mnist_files(root: str | os.PathLike | None) -> dict[str, Path]:
    """Paths of the four IDX files under ``root``; raises `TicketlabError` saying what to put where."""
    if root is None:
        raise TicketlabError(f"{NEEDS}; put them in a directory DIR and pass --data-dir DIR.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise TicketlabError(f"{NEEDS}, but {root} is not a directory; pass --data-dir DIR.")
    found = {key: _find(root, stem) for key, stem in FILES.items()}
    missing = [FILES[key] for key, path in found.items() if path is None]
    if missing:
        raise TicketlabError(f"{NEEDS}, but {root} lacks {', '.join(missing)}; pass --data-dir DIR.")
    return found


def _images_and_labels(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, rows, cols)`` and int64 labels ``(N,)`` in 0..9, checked to agree."""
    x, y = read_idx(images, 3), read_idx(labels, 1)
    if len(x) != len(y):
        raise TicketlabError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels.")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise TicketlabError(f"{labels} has labels outside 0..9, so it is not an MNIST label file.")
    return x, y.astype(np.int64)


def load_mnist(root: str | os.PathLike | None = None, *, val_fraction: float, split_seed: int) -> DataSplits:
    """Train (minus validation) / test from the IDX files; inputs ``(1, 28, 28)`` scaled to [0, 1], 10 classes."""
    files = find_mnist_files(root)
    train_x, train_y = _images_and_labels(files["train_x"], files["train_y"])
    test_x, test_y = _images_and_labels(files["test_x"], files["test_y"])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise TicketlabError(f"MNIST train images are {train_x.shape[1:]} but test images are {test_x.shape[1:]}.")
    to_images = lambda a: torch.from_numpy(a).unsqueeze(1)  # noqa: E731 - (N, H, W) -> (N, 1, H, W)
    return build_splits(NAME, to_images(train_x), torch.from_numpy(train_y), to_images(test_x),
                        torch.from_numpy(test_y), num_classes=10, scale=255.0,
                        source=f"MNIST IDX files in {files['train_x'].parent}",
                        val_fraction=val_fraction, split_seed=split_seed)
