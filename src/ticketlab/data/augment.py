"""Seeded data augmentation on image tensors: random crop with padding and horizontal flip.

The CIFAR-10 recipes of ResNet and VGG (He et al. 2016; Frankle et al. 2020, via OpenLTH) pad
each 32x32 image by 4 pixels, crop a random 32x32 window and mirror it with probability 1/2.
Here that runs on a whole batch of tensors ``(B, C, H, W)`` at once, without PIL or torchvision.

Reproducibility: the offsets and flips of a batch are a pure function of ``(seed, iteration)``
(the network's data seed and the iteration of the step), drawn on the CPU from their own
generator and only then applied on the batch's device. So a run resumed from a checkpoint, a
network trained in a stacked group (`ticketlab.train.stacked`) and one trained alone
(`ticketlab.train.loop`) see the same augmented batches, and the crop itself is a pure copy
(gather), so the augmented values are bit-identical everywhere.

Padding value: the inputs are standardised per channel (`ticketlab.data.splits`), so the zero
padding used here is each channel's training mean, where torchvision's padding of raw images
is black. Both are common; the difference is a border colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import TicketlabError
from ..seeding import derive_seed

#: name -> what it does (the registry `--augment` chooses from; "auto" is resolved per dataset).
AUGMENTATIONS: dict[str, str] = {
    "none": "the training batches as they are",
    "crop-flip": "random crop of the image padded by 4 pixels, then a horizontal flip with probability 1/2",
}
#: Pixels of padding around each image before the random crop (the ResNet/VGG CIFAR-10 recipes).
PADDING = 4
#: Datasets that "auto" augments: natural images, where a mirrored or shifted image is still of its class.
AUTO_AUGMENTED: dict[str, str] = {"cifar10": "crop-flip"}


def check_augment(kind: str) -> str:
    """``kind`` if it is a registered augmentation; otherwise a one-sentence `TicketlabError`."""
    if kind == "auto":
        raise TicketlabError("--augment auto depends on the dataset: resolve it first with "
                             "resolve_augment('auto', data_name) (crop-flip for cifar10, none otherwise).")
    if kind not in AUGMENTATIONS:
        raise TicketlabError(f"Unknown augmentation {kind!r} for --augment; choose one of "
                             f"{', '.join(AUGMENTATIONS)} or auto.")
    return kind


def resolve_augment(value: str, data_name: str) -> str:
    """``"auto"`` -> the augmentation used for ``data_name`` (crop-flip for CIFAR-10, none for
    MNIST-like digits and sequences, whose classes flips can change); any other value is checked."""
    if value == "auto":
        return AUTO_AUGMENTED.get(data_name, "none")
    return check_augment(value)


def check_augment_fits(kind: str, input_shape: tuple[int, ...], data_name: str) -> None:
    """Refuse an augmentation the data cannot take (crop and flip need images, (C, H, W)), before a
    run directory is claimed."""
    if kind != "none" and len(tuple(input_shape)) != 3:
        raise TicketlabError(f"--augment {kind} needs image data (channels, height, width), but {data_name} has "
                             f"examples of shape {tuple(input_shape)}; use --augment none.")


def draw_crop_flip(seed: int, iteration: int, count: int, padding: int = PADDING) -> tuple[torch.Tensor, ...]:
    """Row offsets, column offsets (int64 in ``[0, 2*padding]``) and flips (bool), each ``(count,)``,
    for the batch of ``iteration`` of the network with data seed ``seed``; on the CPU."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "augment", iteration))
    offsets = torch.randint(0, 2 * padding + 1, (count, 2), generator=generator)
    flips = torch.randint(0, 2, (count,), generator=generator).to(torch.bool)
    return offsets[:, 0], offsets[:, 1], flips


def crop_flip(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, flips: torch.Tensor,
              padding: int = PADDING) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` zero-padded by ``padding``, cropped back to ``H x W`` at offsets
    (``rows``, ``cols``) ``(B,)`` (``padding`` = no shift), and mirrored left-right where ``flips``.

    ``out[b, c, i, j] = padded[b, c, rows[b] + i, cols[b] + j']`` with ``j' = W-1-j`` if flipped.
    A gather: every output value is an input value or 0, bit for bit.
    """
    batch, channels, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    wide = width + 2 * padding
    device = x.device
    row_index = rows.to(device)[:, None] + torch.arange(height, device=device)        # (B, H)
    col_index = cols.to(device)[:, None] + torch.arange(width, device=device)         # (B, W)
    col_index = torch.where(flips.to(device)[:, None], col_index.flip(-1), col_index)
    flat = (row_index[:, :, None] * wide + col_index[:, None, :]).reshape(batch, 1, height * width)
    out = padded.reshape(batch, channels, -1).gather(2, flat.expand(batch, channels, height * width))
    return out.view(batch, channels, height, width)


def _check_images(x: torch.Tensor, kind: str, leading: int) -> None:
    if x.dim() != 3 + leading:
        shape = "(N, B, C, H, W)" if leading == 2 else "(B, C, H, W)"
        raise TicketlabError(f"--augment {kind} needs image data {shape}, but the batch has shape "
                             f"{tuple(x.shape)}; use --augment none for this dataset.")


def augment_batch(x: torch.Tensor, kind: str, seed: int, iteration: int, *, first: int = 0,
                  total: int | None = None) -> torch.Tensor:
    """The batch ``x`` ``(B, C, H, W)`` of step ``iteration`` augmented by ``kind``.

    A pure function of ``(x, kind, seed, iteration)``. ``first``/``total``: ``x`` holds rows
    ``first : first + B`` of a global batch of ``total`` examples (a torchrun rank's slice); the
    draws are those of the global batch, so every rank augments as one process would.
    """
    if check_augment(kind) == "none":
        return x
    _check_images(x, kind, 1)
    total = len(x) if total is None else total
    rows, cols, flips = (t[first: first + len(x)] for t in draw_crop_flip(seed, iteration, total))
    return crop_flip(x, rows, cols, flips)


def draw_stacked(kind: str, seeds: Sequence[int], iteration: int, count: int) -> tuple[torch.Tensor, ...] | None:
    """The draws of `augment_stacked` for ``len(seeds)`` networks' batches of ``count`` examples at
    ``iteration``: row offsets, column offsets and flips, each ``(N·count,)``, network after network
    (None for ``none``). Apart from `apply_stacked`, so a recorded step (`ticketlab.train.cuda_graph`)
    can take them as inputs."""
    if check_augment(kind) == "none":
        return None
    draws = [draw_crop_flip(seed, iteration, count) for seed in seeds]
    return tuple(torch.cat(parts) for parts in zip(*draws))


def apply_stacked(x: torch.Tensor, draws: Sequence[torch.Tensor] | None) -> torch.Tensor:
    """``x`` ``(N, B, C, H, W)`` cropped and flipped by ``draws`` (`draw_stacked`; None: unchanged)."""
    if draws is None:
        return x
    return crop_flip(x.reshape(-1, *x.shape[2:]), *draws).view(x.shape)


def augment_stacked(x: torch.Tensor, kind: str, seeds: Sequence[int], iteration: int) -> torch.Tensor:
    """``x`` ``(N, B, C, H, W)``: network ``n``'s batch augmented with its own data seed
    ``seeds[n]``, exactly as `augment_batch` augments it when that network trains alone."""
    if check_augment(kind) == "none":
        return x
    _check_images(x, kind, 2)
    if len(seeds) != len(x):
        raise TicketlabError(f"Stacked augmentation got {len(seeds)} seeds for {len(x)} networks.")
    return apply_stacked(x, draw_stacked(kind, seeds, iteration, x.shape[1]))


__all__ = ["check_augment_fits", "AUGMENTATIONS", "AUTO_AUGMENTED", "PADDING", "apply_stacked", "augment_batch",
           "augment_stacked", "check_augment", "draw_stacked",
           "crop_flip", "draw_crop_flip", "resolve_augment"]
