"""Ways of running a 2:4 weight on a CUDA GPU, side by side with dense, to pick the fastest for
``ticketlab.deploy`` (which uses the first non-dense row today).

    python benchmarks/gpu_24_variants.py [--tokens 4096,16384,32768] [--repeats 15]

Rows, per weight shape (LLaMA-7B layers), token count and dtype, each the median of ``--repeats``
alternating timed calls after a warm-up:
  dense       ``F.linear(x, W)``
  subclass    ``F.linear(x, to_sparse_semi_structured(W))`` (torch's tensor subclass)
  cslt        ``torch._cslt_sparse_mm(compressed W, xᵀ, transpose_result=True)`` (cuSPARSELt directly)
  cslt-tuned  the same with the algorithm and split-K cuSPARSELt's search picks for the shape (as deploy does)
Ratios are dense time / variant time (above 1: faster than dense); max|diff| is against dense.
Measured on an H200 (torch 2.11, bf16): the tuned variant 1.21-1.31x on the MLP shapes at
16384-32768 tokens, the others below 1.17x; what `ticketlab.deploy.kernels.Packed24` now uses.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ticketlab.deploy.kernels import cusparselt_algorithm


def timed(runners: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(repeats + 3):
        for name, run in runners.items():
            torch.cuda.synchronize()
            started = time.perf_counter()
            run()
            torch.cuda.synchronize()
            if round_index >= 3:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def variants(weight: torch.Tensor, x: torch.Tensor) -> dict:
    from torch.sparse import to_sparse_semi_structured

    subclass = to_sparse_semi_structured(weight)
    compressed = torch._cslt_compress(weight)
    runners = {"dense": lambda: F.linear(x, weight), "subclass": lambda: F.linear(x, subclass),
               "cslt": lambda: torch._cslt_sparse_mm(compressed, x.t(), transpose_result=True)}
    try:
        alg = cusparselt_algorithm(compressed, x.t())
        runners[f"cslt-tuned(alg {alg.alg_id}, split {alg.split_k}/{alg.split_k_mode})"] = (
            lambda: torch._cslt_sparse_mm(compressed, x.t(), transpose_result=True, **alg.keywords()))
    except Exception as error:  # noqa: BLE001 - a probe: report and go on
        print(f"    (no algorithm search: {str(error).splitlines()[0][:100]})")
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    parser.add_argument("--tokens", default="4096,16384,32768")
    parser.add_argument("--dtypes", default="bfloat16",
                        help="Comma list; float16's algorithm search failed inside cuSPARSELt on an H200 (torch 2.11) "
                             "and left the CUDA context unusable, so it is opt-in.")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return
    from ticketlab.select import NMPattern, select

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"cuSPARSELt {torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else 'absent'}")
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for shape in args.shapes.split(","):
            rows, cols = (int(v) for v in shape.split("x"))
            dense = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))
            keep = select({"w": dense.abs()}, pattern=NMPattern(2, 4))["w"]
            weight = (dense * keep).to(device="cuda", dtype=dtype)
            for tokens in (int(t) for t in args.tokens.split(",")):
                x = torch.randn(tokens, cols, device="cuda", dtype=dtype)
                try:
                    runners = variants(weight, x)
                    medians = timed(runners, args.repeats)
                except Exception as error:  # noqa: BLE001 - a probe: report and go on
                    print(f"{dtype_name} {shape} tokens {tokens:>6}: failed: {str(error).splitlines()[0][:160]}")
                    continue
                reference = runners["dense"]()
                cells = []
                for name, seconds in medians.items():
                    diff = float((runners[name]() - reference).abs().max()) if name != "dense" else 0.0
                    cells.append(f"{name} {1e3 * seconds:.3f} ms ({medians['dense'] / seconds:.2f}x, diff {diff:.1e})")
                print(f"{dtype_name} {shape} tokens {tokens:>6}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
