"""Turning a ``--device`` string into a usable `torch.device`, checked before any work starts."""

from __future__ import annotations

import torch

from .errors import TicketlabError

DEVICE_HELP = "cpu, cuda, cuda:N, or auto (CUDA when available)"


def resolve_device(name: str | torch.device, *, allow_auto: bool = True) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an unknown or unavailable device is a TicketlabError.

    Only CPU and CUDA devices are supported (the trainer and the LLM engine are tested on those).
    """
    if isinstance(name, torch.device):
        name = str(name)
    if allow_auto and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise TicketlabError(f"Unknown device {name!r}; use {DEVICE_HELP if allow_auto else 'cpu, cuda or cuda:N'}.") from None
    if device.type not in ("cpu", "cuda"):
        raise TicketlabError(f"Device {name!r} is not supported; use cpu or cuda.")
    if device.type == "cpu" and device.index not in (None, 0):
        raise TicketlabError(f"There is one CPU device (its cores are threads: --threads); use --device cpu, "
                             f"not {name!r}.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TicketlabError("CUDA was requested but no CUDA device is available; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TicketlabError(f"There is no CUDA device {device.index}; this machine has "
                                 f"{torch.cuda.device_count()}.")
    return device
