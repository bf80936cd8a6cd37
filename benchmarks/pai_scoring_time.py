"""Scoring time of the pruning-at-initialisation methods SNIP, GraSP and SynFlow on deep CIFAR nets.

For each model (resnet20, vgg16 at CIFAR shape (3, 32, 32), 10 classes, init seed 0) and method,
measures on one seeded batch of random inputs (default 128):

* ``pass``: one call of the scorer (SNIP: forward + backward; GraSP: two forwards, a backward and a
  double backward; SynFlow: one forward + backward of the linearised net on a single all-ones input);
* ``select``: one call of the shared selection routine on those scores (global top-k at the target
  density) — SynFlow pays it once per iteration;
* ``full``: the whole `prune_at_init` at the target density (SynFlow with all its iterations).

    python benchmarks/pai_scoring_time.py [--quick] [--iterations 100] [--batch-size 128] [--density 0.01]
                                          [--models resnet20,vgg16] [--methods snip,grasp,synflow] [--double]

``--quick`` runs SynFlow with 10 iterations instead of 100 (its full time grows linearly with them).
Times are wall-clock seconds on the current device (CPU unless ``--device cuda``).
"""

from __future__ import annotations

import argparse
import time

import torch

from ticketlab.methods import SCORERS, ScoringContext
from ticketlab.methods.pai import keep_counts, prune_at_init
from ticketlab.models import create_model
from ticketlab.select import select
from ticketlab.targets import prunable_parameters

SHAPE = (3, 32, 32)


def timed(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="SynFlow with 10 iterations instead of --iterations.")
    parser.add_argument("--iterations", type=int, default=100, help="SynFlow iterations (default 100).")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--models", default="resnet20,vgg16")
    parser.add_argument("--methods", default="snip,grasp,synflow")
    parser.add_argument("--double", action="store_true", help="SynFlow in float64.")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    iterations = 10 if args.quick else args.iterations
    device = torch.device(args.device)

    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"density {args.density}, SynFlow iterations {iterations}{' (float64)' if args.double else ''}")
    header = f"{'model':<9} {'weights':>10} {'method':<8} {'pass s':>8} {'select s':>9} {'full s':>8}"
    print(header)
    print("-" * len(header))
    for model_name in args.models.split(","):
        model = create_model(model_name, SHAPE, 10, seed=0).to(device)
        params = prunable_parameters(model)
        total = sum(p.numel() for p in params.values())
        g = torch.Generator().manual_seed(0)
        batch = (torch.randn(args.batch_size, *SHAPE, generator=g).to(device),
                 torch.randint(0, 10, (args.batch_size,), generator=g).to(device))
        context = ScoringContext(generator=torch.Generator().manual_seed(0), batches=(batch,), input_shape=SHAPE,
                                 synflow_double=args.double)
        count = keep_counts({n: tuple(p.shape) for n, p in params.items()}, args.density, "global", "uniform")
        for method in args.methods.split(","):
            SCORERS[method](model, params, context)                       # warm-up (allocator, kernels)
            pass_s, scores = timed(lambda: SCORERS[method](model, params, context))
            select_s, _ = timed(lambda: select(scores, count, scope="global"))
            full_s, mask = timed(lambda: prune_at_init(model, params, args.density, method=method, context=context,
                                                       synflow_iterations=iterations))
            label = f"{method}x{iterations}" if method == "synflow" else method
            print(f"{model_name:<9} {total:>10,} {label:<8} {pass_s:>8.3f} {select_s:>9.3f} {full_s:>8.2f}"
                  + (f"  collapsed: {', '.join(mask.collapsed_layers())}" if mask.collapsed_layers() else ""),
                  flush=True)


if __name__ == "__main__":
    main()
