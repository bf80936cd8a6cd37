"""Cost of ticketlab's selection routine against the bare torch operation it is built on.

For fp32 score tensors of 4096x4096 and 4096x11008 (LLaMA-7B's attention and MLP shapes) this
times, on the chosen device,

* 50% per-row sparsity: Wanda's path (`ticketlab.methods.wanda.lowest_k_per_row`, which never
  waits for the device) and the checked ``select_tensors(scope="row")`` (NaN and pruned-row flags
  read once at the end), against a bare ``torch.kthvalue`` over the rows;
* 2:4: ``select_tensors(pattern=2:4)`` unchecked and checked, against a bare ``torch.topk(2)`` over
  the groups of 4 (which, unlike ticketlab, ignores the tie rule);

and prints the median milliseconds of each, side by side, their ratio and (on CUDA) the peak
memory each call adds. The two calls of a pair alternate, so drift in machine speed cancels out;
on CUDA every call is followed by a synchronisation, so a time includes all the work queued.

    python benchmarks/selection_speed.py [--device cpu|cuda] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ticketlab.methods.wanda import lowest_k_per_row
from ticketlab.select import NMPattern, select_tensors

SHAPES = ((4096, 4096), (4096, 11008))


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, int]:
    """(seconds, bytes of device memory the call added at its peak; 0 on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else 0
    del result
    return seconds, peak


def compare(ours: Callable[[], Any], bare: Callable[[], Any], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds and peak added memory of both, measured alternately after one warm-up each."""
    ours(), bare()
    times: dict[str, list[float]] = {"ours": [], "bare": []}
    peaks: dict[str, int] = {"ours": 0, "bare": 0}
    for r in range(repeats):
        order = (("ours", ours), ("bare", bare)) if r % 2 == 0 else (("bare", bare), ("ours", ours))
        for key, fn in order:
            seconds, peak = _timed(fn, device)
            times[key].append(seconds)
            peaks[key] = max(peaks[key], peak)
    return {"ours": statistics.median(times["ours"]), "bare": statistics.median(times["bare"]),
            "ours_peak": peaks["ours"], "bare_peak": peaks["bare"]}


def cases(scores: torch.Tensor) -> list[tuple[str, str, Callable[[], Any], Callable[[], Any]]]:
    """(label, bare op, ticketlab call, bare call) for one score tensor (rows, cols)."""
    rows, cols = scores.shape
    pruned = cols // 2                              # 50% of every row
    kept = cols - pruned
    rank = cols - kept + 1                          # the k-th *lowest* that is each row's threshold
    groups = scores.view(-1, 4)
    two_four = NMPattern(2, 4)
    return [
        ("row 50%, lowest_k_per_row (Wanda)", "kthvalue", lambda: lowest_k_per_row(scores, pruned),
         lambda: torch.kthvalue(scores, rank, dim=1)),
        ("row 50%, select_tensors checked", "kthvalue",
         lambda: select_tensors({"w": scores}, rows * kept, scope="row"),
         lambda: torch.kthvalue(scores, rank, dim=1)),
        ("2:4, select_tensors unchecked", "topk", lambda: select_tensors({"w": scores}, pattern=two_four, check=False),
         lambda: torch.topk(groups, 2, dim=1)),
        ("2:4, select_tensors checked", "topk", lambda: select_tensors({"w": scores}, pattern=two_four),
         lambda: torch.topk(groups, 2, dim=1)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available on this machine.")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# selection speed on {name}, torch {torch.__version__}, median of {args.repeats} alternating calls")
    print(f"{'shape':>11}  {'case':<36} {'bare':>8} {'bare ms':>9} {'ticketlab ms':>13} {'ratio':>6}"
          f" {'bare MiB':>9} {'ticketlab MiB':>14}")
    g = torch.Generator().manual_seed(args.seed)
    for rows, cols in SHAPES:
        # |w|·‖x‖-like scores: continuous, so ties are rare, as in a real layer
        scores = (torch.randn(rows, cols, generator=g).abs() * torch.rand(cols, generator=g)).to(device)
        for label, bare_name, ours, bare in cases(scores):
            r = compare(ours, bare, device, args.repeats)
            mib = (lambda b: f"{b / 2**20:.0f}") if device.type == "cuda" else (lambda b: "-")
            print(f"{rows:>5}x{cols:<5}  {label:<36} {bare_name:>8} {1e3 * r['bare']:>9.2f} {1e3 * r['ours']:>13.2f}"
                  f" {r['ours'] / r['bare']:>6.2f} {mib(r['bare_peak']):>9} {mib(r['ours_peak']):>14}")
        del scores


if __name__ == "__main__":
    main()
