"""This process's peak resident memory, measured so that it belongs to this process alone.

``getrusage(RUSAGE_SELF).ru_maxrss`` is not enough on Linux: ``exec`` carries the high-water mark
of the address space it replaces into the new program's figure, and Python starts subprocesses
with ``vfork``, whose replaced address space is the *parent's*. A child launched by a 1 GB parent
therefore reports at least 1 GB whatever it does. ``VmHWM`` in ``/proc/self/status`` is the
high-water mark of the current address space only, so it is read first.
"""

from __future__ import annotations

import sys


def _vm_hwm_bytes() -> int | None:
    """``VmHWM`` (peak RSS of this address space) in bytes, or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    value, unit = line.split()[1:3]
                    return int(value) * {"kB": 1024, "mB": 2**20, "gB": 2**30}.get(unit, 1024)
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far, in bytes (0 where it cannot be read)."""
    hwm = _vm_hwm_bytes()
    if hwm is not None:
        return hwm
    try:
        import resource
    except ImportError:     # Windows
        return 0
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


__all__ = ["peak_rss_bytes"]
