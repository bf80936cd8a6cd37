"""Process-group helpers for data-parallel training under ``torchrun``.

`train` calls `init_from_env` itself: when the environment describes more than one process
(``WORLD_SIZE > 1``, as ``torchrun`` sets it) or a process group is already initialised, it joins
the group (``gloo`` on CPU, ``nccl`` on CUDA) and wraps the model in DistributedDataParallel.
Everything else here lets the experiment runners behave well in that setting: `rank`,
`world_size` and `is_main_process` answer correctly *before* the group exists (from the same
environment variables), so a runner can decide that only rank 0 writes files without caring
whether `train` has run yet.

Nothing here is needed in a single process: every helper degrades to the trivial answer
(rank 0 of 1, barriers that return at once).
"""

from __future__ import annotations

import atexit
import datetime
import os

import torch
import torch.distributed as dist

from ..errors import TicketlabError

#: How long a collective may wait for the other ranks before the run fails instead of hanging.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise TicketlabError(f"The environment variable {name}={value!r} is not an integer.") from None


def is_initialized() -> bool:
    """True when a default process group exists in this process."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes: the process group's size, else ``WORLD_SIZE`` (default 1)."""
    return dist.get_world_size() if is_initialized() else _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's global rank: the process group's, else ``RANK`` (default 0)."""
    return dist.get_rank() if is_initialized() else _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``, default 0): picks its CUDA device."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one process that writes files and prints."""
    return rank() == 0


def is_distributed() -> bool:
    """True when training should be data-parallel (a group exists or the environment asks for one)."""
    return is_initialized() or world_size() > 1


def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA tensors, ``gloo`` for CPU ones."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device) -> torch.device:
    """The device this rank trains on: ``cuda`` without an index becomes ``cuda:LOCAL_RANK``
    when several processes share a machine; CPU and explicit indices are kept."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def init_from_env(device: torch.device | str = "cpu", *, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> bool:
    """Join the process group described by the environment, if there is one.

    Returns True when this process is (now) part of a group with more than one rank. An existing
    group is used as it is; otherwise one is created with ``init_method="env://"`` (``torchrun``
    sets ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` and ``WORLD_SIZE``) and destroyed at exit.
    """
    if is_initialized():
        return dist.get_world_size() > 1
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    if not dist.is_available():
        raise TicketlabError("WORLD_SIZE > 1 asks for distributed training, but this PyTorch build has no torch.distributed.")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in os.environ]
    if missing:
        raise TicketlabError(
            f"WORLD_SIZE > 1 but {', '.join(missing)} is not set; launch with torchrun (python -m torch.distributed.run)."
        )
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(rank_device(device))
    dist.init_process_group(backend=backend_for(device), init_method="env://", timeout=timeout)
    atexit.register(shutdown)
    return dist.get_world_size() > 1


def shutdown() -> None:
    """Destroy the default process group if one exists (safe to call twice)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here; returns at once in a single process."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@torch.no_grad()
def sync_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every rank.

    DDP computes batch statistics per rank, so running statistics drift apart between ranks;
    syncing them before an evaluation makes every rank report the same numbers.
    """
    if not (is_initialized() and dist.get_world_size() > 1):
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


@torch.no_grad()
def all_ranks_agree(values: torch.Tensor) -> bool:
    """True when the (int64 or float) vector ``values`` is identical on every rank (one MIN and one MAX reduce).

    Used to check collective decisions (the mask after a RigL/SET update): every rank gets the
    same answer, so all of them can raise together instead of one rank hanging.
    """
    if not (is_initialized() and dist.get_world_size() > 1):
        return True
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    low = values.detach().to(device=device).clone()
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


@torch.no_grad()
def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over all ranks (a new tensor; ``value`` itself in a single process)."""
    if not (is_initialized() and dist.get_world_size() > 1):
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


__all__ = ["DEFAULT_TIMEOUT", "all_ranks_agree", "all_reduce_sum", "backend_for", "barrier", "init_from_env",
           "is_distributed", "is_initialized", "is_main_process", "local_rank", "rank", "rank_device",
           "shutdown", "sync_buffers", "world_size"]
