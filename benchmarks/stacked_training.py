"""Throughput of stacked training (N masked networks at once) vs the same N trained one after
another, side by side in one run.

Both sides use ticketlab's own trainers on the same jobs: N LeNet-300-100s (seeds 0..N-1, each
with its own random 80%-sparse mask and its own data order), Adam, batch 60, evaluations as in a
real run. Sequential = `ticketlab.train.train` once per network; stacked = one
`ticketlab.train.stacked.train_stacked` call. The two sides alternate, each repeated, and the
medians are compared; the largest relative weight difference between the two sides' results is
printed as a check that they trained the same networks. On a CUDA device the stacked side records
its step as a CUDA graph (the default there); a third side, stacked without graphs, shows what
stacking alone gives.

    python benchmarks/stacked_training.py [--data digits] [--model lenet300] [--networks 8]
        [--steps 200it] [--repeats 3] [--device cpu] [--threads N] [--augment crop-flip]

Ends with ``throughput ratio (stacked / sequential): X`` (network-iterations per second).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ticketlab.data import load_dataset
from ticketlab.masks import Mask
from ticketlab.models import create_model
from ticketlab.targets import prunable_parameters
from ticketlab.train import TrainConfig, train
from ticketlab.train.stacked import StackedJob, train_stacked


def make_jobs(args, data) -> list[StackedJob]:
    """N networks with their own init, 20%-dense random mask and data seed (deterministic)."""
    jobs = []
    for index in range(args.networks):
        model = create_model(args.model, data.input_shape, data.num_classes, seed=index)
        generator = torch.Generator().manual_seed(1000 + index)
        params = dict(model.named_parameters())
        mask = Mask({n: torch.rand(params[n].shape, generator=generator) < 0.2 for n in prunable_parameters(model)})
        jobs.append(StackedJob(model=model, mask=mask, data_seed=index))
    return jobs


def run_sequential(args, data, config) -> tuple[float, list[dict], list]:
    jobs = make_jobs(args, data)
    start = time.perf_counter()
    results = [train(job.model, data, config, data_seed=job.data_seed, mask=job.mask, device=args.device)
               for job in jobs]
    _sync(args.device)
    return time.perf_counter() - start, [job.model.state_dict() for job in jobs], results


def run_stacked(args, data, config, graphs: bool = True) -> tuple[float, list[dict], list]:
    jobs = make_jobs(args, data)
    start = time.perf_counter()
    results = train_stacked(jobs, data, config, device=args.device, graphs=graphs)
    _sync(args.device)
    return time.perf_counter() - start, [job.model.state_dict() for job in jobs], results


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def largest_difference(a: list[dict], b: list[dict]) -> float:
    """max over networks and tensors of |a - b| / max(|b|) (0 = identical)."""
    worst = 0.0
    for sa, sb in zip(a, b):
        for name, tensor in sa.items():
            if tensor.is_floating_point():
                other = sb[name].to(tensor.device)
                scale = float(other.abs().max()) or 1.0
                worst = max(worst, float((tensor - other).abs().max()) / scale)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--networks", type=int, default=8)
    parser.add_argument("--steps", default="200it")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--augment", default="none", help="none or crop-flip (image data)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    config = TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60, steps=args.steps, augment=args.augment)
    iterations = config.steps.iterations(max(1, len(data.train_y) // 60))
    print(f"{args.networks} x {args.model} on {args.data}, {iterations} iterations each, augment {args.augment}, "
          f"device {args.device}, {torch.get_num_threads()} threads")
    sides = {"sequential": lambda c: run_sequential(args, data, c), "stacked": lambda c: run_stacked(args, data, c)}
    if torch.device(args.device).type == "cuda":  # the default stacked step is a CUDA graph there
        sides["stacked, no CUDA graphs"] = lambda c: run_stacked(args, data, c, graphs=False)
    warm_up = TrainConfig(optimizer="adam", batch_size=60, steps="8it", augment=args.augment)
    for run in sides.values():
        run(warm_up)
    times = {name: [] for name in sides}
    difference, accuracy_gap = {}, {}
    for repeat in range(args.repeats):
        outcome = {name: run(config) for name, run in sides.items()}
        for name, (elapsed, states, results) in outcome.items():
            times[name].append(elapsed)
            if name != "sequential":
                _, seq_states, seq_results = outcome["sequential"]
                difference[name] = max(difference.get(name, 0.0), largest_difference(states, seq_states))
                accuracy_gap[name] = max(accuracy_gap.get(name, 0.0), *(
                    abs(a.final["test_accuracy"] - b.final["test_accuracy"]) for a, b in zip(results, seq_results)))
        print(f"  repeat {repeat}: " + ", ".join(f"{name} {outcome[name][0]:.2f} s" for name in sides))
    work = args.networks * iterations
    rates = {name: work / statistics.median(values) for name, values in times.items()}
    for name, rate in rates.items():
        print(f"{name + ':':<24} {rate:,.0f} network-iterations/s (median of {args.repeats})")
    for name in difference:
        print(f"{name} vs sequential: largest relative weight difference {difference[name]:.2e}; "
              f"largest final test-accuracy difference {accuracy_gap[name]:.2f} points")
    if "stacked, no CUDA graphs" in rates:
        print(f"throughput ratio (stacked without CUDA graphs / sequential): "
              f"{rates['stacked, no CUDA graphs'] / rates['sequential']:.2f}")
    print(f"throughput ratio (stacked / sequential): {rates['stacked'] / rates['sequential']:.2f}")


if __name__ == "__main__":
    main()
