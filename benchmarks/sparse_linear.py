"""One pruned Linear layer on this machine: every execution backend against dense, side by side.

    python benchmarks/sparse_linear.py [--size 4096] [--densities 0.5,0.3,0.1,0.02] [--batches 1,8,64]
                                       [--threads 2] [--repeats 15] [--dtype float32]
                                       [--mode latency|throughput]

For each (density, batch) every backend is paired with dense (``F.linear`` on the same weight with
its zeros): the two run in alternation, ``--repeats`` rounds after a warm-up, and the script prints
each backend's median time and its speed-up over the dense median of its own pairing (so no
backend's speed depends on which other backend happened to run before it), then the ratio of
ticketlab's own kernels to the best library backend (torch CSR). The weight is Gaussian with a
uniformly random mask; outputs are checked against float64 first.

``--mode latency`` (default) times single calls: the layer's weights are cold after the dense run,
as they are in a network whose layers take turns. ``--mode throughput`` times each side as the mean
of back-to-back calls over ~5 ms (one layer serving a stream of requests), so a layout small enough
to stay in the last-level cache between calls gets that benefit; the two modes bracket what a real
network sees.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ticketlab.deploy.kernels import BACKENDS, kernel_status


def timed(fn, x, throughput: bool = False) -> float:
    """Seconds per call: one call, or the mean of back-to-back calls over at least 5 ms."""
    started = time.perf_counter()
    fn(x)
    elapsed, calls = time.perf_counter() - started, 1
    while throughput and elapsed < 5e-3:
        fn(x)
        calls += 1
        elapsed = time.perf_counter() - started
    return elapsed / calls


def measure(weight, bias, batch: int, repeats: int, dtype, throughput: bool = False) -> dict[str, tuple[float, float]]:
    """backend -> (dense median, backend median), each pair measured in alternation."""
    x = torch.randn(batch, weight.shape[1], generator=torch.Generator().manual_seed(batch)).to(dtype)
    reference = torch.nn.functional.linear(x.double(), weight.double(), bias.double())
    runners = {}
    for name, backend in BACKENDS.items():
        low, high = backend.batch_sizes()
        if backend.unavailable(weight) is None and low <= batch <= high:
            packed = backend.pack(weight, bias)
            runners[name] = (lambda x, b=backend, p=packed: b.run(p, x))
            error = float((runners[name](x).double() - reference).abs().max() / reference.abs().max())
            assert error < (1e-5 if dtype == torch.float32 else 1e-2), (name, error)
    results: dict[str, tuple[float, float]] = {}
    for name, fn in runners.items():
        if name == "dense":
            continue
        pair = {"dense": runners["dense"], name: fn}
        times: dict[str, list[float]] = {n: [] for n in pair}
        for round_index in range(repeats + 3):  # three warm-up rounds
            for n, f in pair.items():
                t = timed(f, x, throughput)
                if round_index >= 3:
                    times[n].append(t)
        results[name] = (statistics.median(times["dense"]), statistics.median(times[name]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--densities", default="0.5,0.3,0.1,0.02")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--mode", default="latency", choices=["latency", "throughput"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    status = kernel_status()
    print(f"torch {torch.__version__}, {args.threads} threads, {args.dtype}, {args.mode}; C++ kernels: "
          f"{status['simd'] if status['available'] else status['reason']}")
    g = torch.Generator().manual_seed(0)
    for density in (float(d) for d in args.densities.split(",")):
        weight = torch.randn(args.size, args.size, generator=g)
        weight = (weight * (torch.rand(weight.shape, generator=g) < density)).to(dtype)
        bias = torch.randn(args.size, generator=g).to(dtype)
        for batch in (int(b) for b in args.batches.split(",")):
            pairs = measure(weight, bias, batch, args.repeats, dtype, args.mode == "throughput")
            speedups = {n: dense / t for n, (dense, t) in pairs.items()}
            cells = "  ".join(f"{n} {1e3 * t:7.3f} ms ({dense / t:5.2f}x)" for n, (dense, t) in pairs.items())
            ours = max((v for n, v in speedups.items() if n.startswith("cpu-")), default=None)
            library = speedups.get("torch-csr")
            versus = f"  ours/torch-csr speed {ours / library:4.2f}x" if ours and library else ""
            print(f"density {density:4.2f} batch {batch:3d}: {cells}{versus}")


if __name__ == "__main__":
    main()
