"""2:4 semi-structured execution on a CUDA GPU against dense, and what `sparsify` chooses.

    python benchmarks/gpu_semi_structured.py [--shapes 4096x4096,11008x4096,4096x11008]
                                             [--tokens 16,256,1024,4096,16384] [--dtype bfloat16]
                                             [--repeats 20]

For every weight shape (LLaMA-7B layers by default) and token count, a 2:4-pruned weight runs as a
dense ``F.linear`` and through ``to_sparse_semi_structured`` (cuSPARSELt / CUTLASS as torch picks),
alternating, ``--repeats`` rounds after a warm-up, timed with CUDA synchronisation; the script
prints the median times, the ratio, and the backend `ticketlab.deploy.execute` chooses for that
bucket (dense expected for small token counts, 2:4 for large ones). Without CUDA it says so and exits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_24_variants import timed  # noqa: E402 - the alternating, synchronised timing loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    parser.add_argument("--tokens", default="16,256,1024,4096,16384")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return
    from ticketlab.deploy.execute import SparseLinear
    from ticketlab.deploy.kernels import BACKENDS
    from ticketlab.select import NMPattern, select

    dtype = getattr(torch, args.dtype)
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {args.dtype}")
    backend = BACKENDS["cuda-2:4"]
    for shape in args.shapes.split(","):
        out_features, in_features = (int(v) for v in shape.split("x"))
        weight = torch.randn(out_features, in_features)
        weight = (weight * select({"w": weight.abs()}, pattern=NMPattern(2, 4))["w"]).to(device=device, dtype=dtype)
        reason = backend.unavailable(weight)
        if reason:
            print(f"{shape}: 2:4 unavailable ({reason})")
            continue
        packed = backend.pack(weight, None)
        layer = torch.nn.Linear(in_features, out_features, bias=False, device=device, dtype=dtype)
        layer.weight.data.copy_(weight)
        sparse_layer = SparseLinear(layer)
        for tokens in (int(t) for t in args.tokens.split(",")):
            x = torch.randn(tokens, in_features, device=device, dtype=dtype)
            runners = {"dense": lambda: torch.nn.functional.linear(x, weight), "2:4": lambda: backend.run(packed, x)}
            medians = timed(runners, args.repeats)
            dense, sparse = medians["dense"], medians["2:4"]
            error = float((runners["dense"]() - runners["2:4"]()).abs().max())
            print(f"{shape} tokens {tokens:>6}: dense {1e3 * dense:8.3f} ms  2:4 {1e3 * sparse:8.3f} ms  "
                  f"ratio {dense / sparse:5.2f}x  max|diff| {error:.2e}  sparsify chooses {sparse_layer.plan_for(tokens)}")


if __name__ == "__main__":
    main()
