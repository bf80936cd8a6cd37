"""`ticketlab.memory.peak_rss_bytes`: this process's own peak, not one inherited from its parent."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ticketlab.memory import peak_rss_bytes

CHILD = "from ticketlab.memory import peak_rss_bytes; print(peak_rss_bytes())"


def test_the_peak_grows_with_memory_touched_here():
    before = peak_rss_bytes()
    block = torch.ones(64 * 2**20 // 4)     # 64 MiB, every page written
    assert peak_rss_bytes() >= max(before, 64 * 2**20)
    del block


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited high-water mark is a Linux effect")
def test_a_child_does_not_report_its_parents_peak():
    held = torch.ones(400 * 2**20 // 4)     # the parent holds 400 MiB while the child starts
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    assert int(child.stdout) < 300 * 2**20   # a bare interpreter with torch is far below the parent's 400 MiB
    del held
