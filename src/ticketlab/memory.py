"""Memory figures and limits of this process, for choosing batch sizes and checking room.

`peak_rss_bytes` is this process's own peak. ``getrusage(RUSAGE_SELF).ru_maxrss`` is not enough
on Linux: ``exec`` carries the high-water mark of the address space it replaces into the new
program's figure, and Python starts subprocesses with ``vfork``, whose replaced address space is
the *parent's*, so a child launched by a 1 GB parent reports at least 1 GB whatever it does.
``VmHWM`` in ``/proc/self/status`` is the high-water mark of the current address space only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def _status_bytes(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` (``VmHWM``: peak RSS of this address space, ``VmRSS``:
    current RSS) in bytes, or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    value, unit = line.split()[1:3]
                    return int(value) * {"kB": 1024, "mB": 2**20, "gB": 2**30}.get(unit, 1024)
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far, in bytes (0 where it cannot be read)."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource
    except ImportError:     # Windows
        return 0
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


#: Elements of a (rows, cols) temporary worked on at once on the CPU (4 MiB in fp32): row-local
#: steps (Wanda's scores and selection, reconstruction errors) go through a layer in slices of
#: rows this size, so streaming a model holds about one block and not a block's worth of copies.
#: On CUDA the whole layer is one slice (each slice costs kernel launches; the block is on the GPU).
ROW_SLICE_ELEMENTS = 1 << 20


def row_slices(rows: int, cols: int, device: torch.device) -> list[slice]:
    """Consecutive row ranges of a (rows, cols) tensor, each at most `ROW_SLICE_ELEMENTS` on the CPU."""
    step = rows if device.type != "cpu" else max(1, ROW_SLICE_ELEMENTS // max(1, cols))
    return [slice(r0, min(r0 + step, rows)) for r0 in range(0, rows, step)] or [slice(0, 0)]


def current_rss_bytes() -> int | None:
    """This process's resident set size now, in bytes (None off Linux)."""
    return _status_bytes("VmRSS")


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory of this process on ``device`` (bytes) and where the figure comes from."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    return peak_rss_bytes(), "cpu_peak_rss"


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: CUDA's free bytes, or Linux's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_limit_bytes() -> int | None:
    """What this process may allocate: the lower of its RLIMIT_DATA / RLIMIT_AS soft limits and the
    system's available memory (None when nothing is known)."""
    limits = []
    try:
        import resource
    except ImportError:     # Windows: no resource limits to read
        resource = None
    for kind in (resource.RLIMIT_DATA, resource.RLIMIT_AS) if resource is not None else ():
        soft, _ = resource.getrlimit(kind)
        if soft != resource.RLIM_INFINITY:
            limits.append(int(soft))
    available = free_memory_bytes(torch.device("cpu"))
    if available is not None:
        limits.append(available)
    return min(limits) if limits else None


def return_freed_memory_promptly() -> None:
    """Ask glibc to serve allocations of 1 MiB and more with their own mappings, which go back to the
    system when freed. Streaming frees a block's tensors before it loads the next; with the default
    (adaptive) threshold those frees stay in the heap and the process grows by a block or two of
    fragments. No-op where glibc is not the allocator."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


__all__ = ["ROW_SLICE_ELEMENTS", "current_rss_bytes", "free_memory_bytes", "memory_limit_bytes", "peak_memory", "peak_rss_bytes",
           "return_freed_memory_promptly", "row_slices"]
