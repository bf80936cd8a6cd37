"""Throughput of ticketlab's masked trainer vs a plain PyTorch loop, side by side in one run.

Both train the same LeNet-300-100 (same init, same 80%-sparse mask, same data order, Adam, batch
60) on mnist5k for the same number of iterations. The plain loop applies the mask in the simplest
correct way: gradients multiplied by the mask before the step, weights after it. Runs alternate
to cancel drift in machine speed; the medians are compared.

    python benchmarks/masked_training_overhead.py [--iterations 1500] [--repeats 5]

Prints iterations per second for both and the ratio ticketlab / plain (aim: >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ticketlab.data import load_dataset
from ticketlab.masks import Mask
from ticketlab.methods import ScoringContext, random_scores
from ticketlab.models import create_model
from ticketlab.select import density_to_count, select
from ticketlab.targets import prunable_parameters
from ticketlab.train import TrainConfig, evaluate, train
from ticketlab.train.schedule import epoch_order, iterations_per_epoch


def plain_loop(model, data, mask: Mask, iterations: int, batch_size: int, lr: float) -> float:
    """The reference: a hand-written masked training loop. Returns wall seconds."""
    params = dict(model.named_parameters())
    masks = {n: mask[n].to(params[n].dtype) for n in mask}
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    ipe = iterations_per_epoch(data, batch_size)
    start = time.perf_counter()
    model.train()
    for it in range(iterations):
        epoch, pos = divmod(it, ipe)
        if pos == 0:
            order = epoch_order(0, epoch, len(data.train_y))
        idx = order[pos * batch_size: (pos + 1) * batch_size]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
        for n, m in masks.items():
            params[n].grad.mul_(m)
        optimizer.step()
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--density", type=float, default=0.2)
    args = parser.parse_args()

    data = load_dataset("mnist5k")
    template = create_model("lenet300", data.input_shape, data.num_classes, seed=0)
    params = prunable_parameters(template)
    scores = random_scores(template, params, ScoringContext(generator=torch.Generator().manual_seed(0)))
    mask = select(scores, {n: density_to_count(args.density, p.numel()) for n, p in params.items()}, scope="layer")
    # one eval at the start and one at the end: the budget is all training
    config = TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60, steps=f"{args.iterations}it",
                         eval_every=f"{args.iterations}it")

    ours, plain = [], []
    for _ in range(args.repeats):
        model = create_model("lenet300", data.input_shape, data.num_classes, seed=0)
        result = train(model, data, config, data_seed=0, mask=mask)
        # ticketlab's time includes its two evaluations; time one and subtract it for fairness

        t0 = time.perf_counter()
        evaluate(model, data.val_x, data.val_y)
        evaluate(model, data.test_x, data.test_y)
        eval_time = time.perf_counter() - t0
        ours.append(result.wall_time - 2 * eval_time)
        model = create_model("lenet300", data.input_shape, data.num_classes, seed=0)
        plain.append(plain_loop(model, data, mask, args.iterations, 60, 1.2e-3))

    ours_ips = args.iterations / statistics.median(ours)
    plain_ips = args.iterations / statistics.median(plain)
    print(f"threads: {torch.get_num_threads()}, iterations: {args.iterations}, repeats: {args.repeats}, "
          f"density: {args.density}")
    print(f"plain PyTorch masked loop : {plain_ips:8.1f} it/s")
    print(f"ticketlab masked trainer  : {ours_ips:8.1f} it/s")
    print(f"throughput ratio (ticketlab / plain): {ours_ips / plain_ips:.3f}")


if __name__ == "__main__":
    main()
