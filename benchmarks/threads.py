"""Seconds per training step at 1 and 2 CPU threads, per model size, idle and beside a busy process.

The data behind `ticketlab.threads.default_threads`. Each case trains with ticketlab's own loop
(`ticketlab.train.train`, Adam, batch 60, evaluations only at the start and the end) a fresh
network for a few iterations; the 1- and 2-thread sides alternate, each repeated, and the medians
are compared. With ``--busy`` a second Python process multiplies matrices on one thread for the
whole measurement (another job on the same machine: a helper's tests, a second run).

    python benchmarks/threads.py [--cases digits-lenet300,mnist5k-lenet300,digits-conv2,cifar-resnet20]
        [--repeats 3] [--busy] [--threads 1,2]

Prints one line per case: step MACs (batch x dense MACs per example, `ticketlab.threads.step_macs`),
the median seconds per step at each thread count, and ``2/1`` = t(2 threads) / t(1 thread):
above 1 the second thread costs time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from ticketlab.data import load_dataset
from ticketlab.data.splits import build_splits
from ticketlab.models import create_model
from ticketlab.threads import set_threads, step_macs
from ticketlab.train import TrainConfig, train

#: case -> (data, model, width, iterations per timing)
CASES = {
    "digits-lenet300": ("digits", "lenet300", 1.0, 60),
    "mnist5k-lenet300": ("mnist5k", "lenet300", 1.0, 40),
    "mnist5k-lenet300x2": ("mnist5k", "lenet300", 2.0, 30),
    "mnist5k-lenet300x4": ("mnist5k", "lenet300", 4.0, 20),
    "digits-conv2": ("digits", "conv2", 1.0, 20),
    "mnist5k-conv2": ("mnist5k", "conv2", 1.0, 6),
    "cifar-resnet20": ("cifar-random", "resnet20", 1.0, 3),
}
BATCH = 60

_BUSY = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
         "while True:\n    a = torch.tanh(a @ a)\n")


def cifar_shaped(seed: int = 0):
    """Random CIFAR-shaped splits (1,200 train, 120 test, 3x32x32, 10 classes): timing only."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(1320, 3, 32, 32, generator=g), torch.randint(0, 10, (1320,), generator=g)
    return build_splits("cifar-random", x[:1200], y[:1200], x[1200:], y[1200:], num_classes=10,
                        source="random", val_fraction=0.1, split_seed=0)


def time_case(data, model_name: str, width: float, iterations: int, threads: int) -> float:
    """Seconds per training step of a fresh ``model_name`` on ``data`` at ``threads`` threads."""
    set_threads(threads)
    model = create_model(model_name, data.input_shape, data.num_classes, seed=0, width=width)
    config = TrainConfig(batch_size=BATCH, steps=f"{iterations}it", eval_every=f"{iterations}it")
    start = time.perf_counter()
    train(model, data, config, data_seed=0)
    return (time.perf_counter() - start) / iterations


def measure(name: str, repeats: int, thread_counts: list[int]) -> dict[int, float]:
    source, model_name, width, iterations = CASES[name]
    data = cifar_shaped() if source == "cifar-random" else load_dataset(source)
    model = create_model(model_name, data.input_shape, data.num_classes, seed=0, width=width)
    macs = step_macs(model, data.input_shape, BATCH)
    time_case(data, model_name, width, max(2, iterations // 4), thread_counts[0])  # warm-up
    times: dict[int, list[float]] = {t: [] for t in thread_counts}
    for r in range(repeats):
        order = thread_counts if r % 2 == 0 else thread_counts[::-1]  # alternate which side goes first
        for t in order:
            times[t].append(time_case(data, model_name, width, iterations, t))
    medians = {t: statistics.median(v) for t, v in times.items()}
    cells = "  ".join(f"{t}T {medians[t] * 1e3:8.1f} ms/step" for t in thread_counts)
    ratio = medians[thread_counts[-1]] / medians[thread_counts[0]]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{name:18s} step MACs {macs / 1e6:9.1f}M  {cells}  {thread_counts[-1]}/{thread_counts[0]} {ratio:5.2f}"
          f"  (load {load:.1f})", flush=True)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="digits-lenet300,mnist5k-lenet300,digits-conv2,cifar-resnet20")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--busy", action="store_true", help="run a one-thread matmul loop beside the measurement")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    busy = subprocess.Popen([sys.executable, "-c", _BUSY]) if args.busy else None
    try:
        if busy is not None:
            time.sleep(1.0)
        print(f"torch {torch.__version__}, {os.cpu_count()} cores, {'one busy process added' if busy else 'no load added'}, batch {BATCH}, "
              f"median of {args.repeats}", flush=True)
        for name in args.cases.split(","):
            measure(name, args.repeats, thread_counts)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


if __name__ == "__main__":
    main()
