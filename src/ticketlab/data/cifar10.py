"""``cifar10``: the "CIFAR-10 python version" (50,000 train / 10,000 test, 32x32 RGB) from a local directory.

The user points ``root`` (``--data-dir``) at the extracted ``cifar-10-batches-py`` folder or at its
parent. Each batch is a Python-2 pickle of a dict with ``data`` (uint8 ``(10000, 3072)``, channel-major)
and ``labels``. Pickles can run code when loaded, so we unpickle with an allow-list that admits only
the NumPy array machinery the real files use: a planted file cannot execute anything.
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import TicketlabError
from .splits import DataSplits, build_splits

NAME = "cifar10"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
FOLDER = "cifar-10-batches-py"
NEEDS = (f"CIFAR-10 needs {', '.join(TRAIN_FILES)} and {TEST_FILE} from the 'CIFAR-10 python version' "
         f"in DIR/{FOLDER} or DIR")

_ALLOWED = {  # (module, name) in the pickle -> the object it may resolve to
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray(0).__reduce__()[0],
    ("numpy.core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("numpy._core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes at pickle protocol 2
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays; any other global is refused."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def find_cifar_dir(root: str | os.PathLike | None) -> Path:
    """The directory holding the six batch files; raises `TicketlabError` saying what to put where."""
    if root is None:
        raise TicketlabError(f"{NEEDS}; put them in a directory DIR and pass --data-dir DIR.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise TicketlabError(f"{NEEDS}, but {root} is not a directory; pass --data-dir DIR.")
    for folder in (root / FOLDER, root):
        if folder.is_dir() and all((folder / f).is_file() for f in (*TRAIN_FILES, TEST_FILE)):
            return folder
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    missing = [f for f in (*TRAIN_FILES, TEST_FILE) if not (folder / f).is_file()]
    raise TicketlabError(f"{NEEDS}, but {folder} lacks {', '.join(missing)}; pass --data-dir DIR.")


def _field(batch: dict, key: str):
    """``batch[key]`` whether the pickle stored keys as bytes (Python 2 originals) or str."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)`` in 0..9 from one batch file."""
    try:
        with open(path, "rb") as handle:
            batch = _ArrayOnlyUnpickler(handle, encoding="bytes").load()
        data, labels = np.asarray(_field(batch, "data")), np.asarray(_field(batch, "labels"), dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise TicketlabError(f"Cannot read CIFAR-10 batch {path} ({type(err).__name__}: {err}); "
                             f"re-extract the 'CIFAR-10 python version' archive.") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise TicketlabError(f"CIFAR-10 batch {path} holds data {data.dtype}{data.shape} with {labels.size} labels "
                             f"instead of uint8 (N, 3072) with N labels.")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise TicketlabError(f"CIFAR-10 batch {path} has labels outside 0..9.")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str | os.PathLike | None = None, *, val_fraction: float, split_seed: int) -> DataSplits:
    """Train (minus validation) / test; inputs ``(3, 32, 32)`` scaled to [0, 1], 10 classes."""
    folder = find_cifar_dir(root)
    parts = [read_batch(folder / f) for f in TRAIN_FILES]
    test_x, test_y = read_batch(folder / TEST_FILE)
    train_x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    train_y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return build_splits(NAME, train_x, train_y, torch.from_numpy(test_x), torch.from_numpy(test_y),
                        num_classes=10, scale=255.0, source=f"CIFAR-10 python batches in {folder}",
                        val_fraction=val_fraction, split_seed=split_seed)
