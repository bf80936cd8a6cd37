"""Wall time of dynamic sparse training (RigL, SET) vs static sparse training, side by side.

All three train the same LeNet-300-100 (same θ0, same initial ERK mask at density 0.1, same data
order, Adam, batch 60) on mnist5k for the same number of iterations with ticketlab's trainer; only
the mask updater differs (none / RigL / SET with ΔT = 100 iterations, α = 0.3, T_end = 75%). Runs
alternate to cancel drift in machine speed; medians are compared.

    python benchmarks/dst_overhead.py [--iterations 1500] [--repeats 5] [--update-every 100it] [--threads N]

On a shared machine pass ``--threads 1``: with more threads than free cores every small tensor
op waits for a scheduler slice and the timings measure the neighbours, not the code.

Prints seconds per run for each and the RigL/static and SET/static wall-time ratios (aim: <= 1.15),
plus the cost of one mask update.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ticketlab.data import load_dataset
from ticketlab.densities import layer_keep_counts
from ticketlab.methods import ScoringContext, random_scores
from ticketlab.methods.dynamic import DSTConfig, make_updater
from ticketlab.models import create_model
from ticketlab.select import select
from ticketlab.targets import prunable_parameters
from ticketlab.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--update-every", default="100it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    data = load_dataset("mnist5k")
    template = create_model("lenet300", data.input_shape, data.num_classes, seed=0)
    params = prunable_parameters(template)
    counts = layer_keep_counts({n: tuple(p.shape) for n, p in params.items()}, args.density, "erk")
    scores = random_scores(template, params, ScoringContext(generator=torch.Generator().manual_seed(0)))
    initial = select(scores, counts, scope="layer")
    # one evaluation at the start and one at the end, the same for all three: the budget is training
    config = TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60, steps=f"{args.iterations}it",
                         eval_every=f"{args.iterations}it")

    methods = ("static", "rigl", "set")
    times: dict[str, list[float]] = {m: [] for m in methods}
    accuracy: dict[str, float] = {}
    updates: dict[str, int] = {}
    changed: dict[str, float] = {}
    update_time: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for method in methods if repeat % 2 == 0 else reversed(methods):
            model = create_model("lenet300", data.input_shape, data.num_classes, seed=0)
            mask = type(initial)({n: t.clone() for n, t in initial.items()})
            updater = None if method == "static" else make_updater(
                DSTConfig(method=method, update_every=args.update_every), seed=0)
            if updater is not None:
                _time_updates(updater, update_time.setdefault(method, []))
            result = train(model, data, config, data_seed=0, mask=mask, mask_updater=updater, device=args.device)
            assert {n: int(t.sum()) for n, t in mask.items()} == counts  # density never moved
            times[method].append(result.wall_time)
            accuracy[method], updates[method] = result.final["test_accuracy"], result.mask_updates
            changed[method] = result.mask_changed_fraction

    median = {m: statistics.median(times[m]) for m in methods}
    print(f"threads: {torch.get_num_threads()}, device: {args.device}, iterations: {args.iterations}, "
          f"repeats: {args.repeats}, density: {args.density} (erk), update every: {args.update_every}")
    for m in methods:
        print(f"{m:>6}: {median[m]:7.3f} s  ({args.iterations / median[m]:7.1f} it/s)  updates: {updates[m]:3d}  "
              f"changed: {100 * changed[m]:5.1f}%  test acc: {accuracy[m]:.2f}%")
    for m in ("rigl", "set"):
        spent = statistics.median(update_time[m])
        per_run = sum(update_time[m]) / args.repeats
        print(f"{m}/static wall-time ratio: {median[m] / median['static']:.3f}   "
              f"mask updates: {1000 * spent:.1f} ms each (median), {per_run:.3f} s per run "
              f"= {100 * per_run / median['static']:.1f}% of the static run")


def _time_updates(updater, sink: list[float]) -> None:
    """Record the seconds of every ``capture`` + ``update_`` call of ``updater`` into ``sink``
    (a direct measure of the mask-update cost, immune to drift between whole runs)."""
    capture, update = updater.capture, updater.update_
    pending = [0.0]

    def timed_capture(*a, **kw):
        started = time.perf_counter()
        out = capture(*a, **kw)
        pending[0] = time.perf_counter() - started
        return out

    def timed_update(*a, **kw):
        started = time.perf_counter()
        out = update(*a, **kw)
        sink.append(pending[0] + time.perf_counter() - started)
        return out

    updater.capture, updater.update_ = timed_capture, timed_update


if __name__ == "__main__":
    main()
