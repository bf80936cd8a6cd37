"""Shared fixtures: tiny synthetic splits and small models, so the suite stays fast."""

import pytest
import torch
from torch import nn

from ticketlab.data import DataSplits

# The suite's networks are tiny: one thread is faster than two, and far steadier on a busy machine.
torch.set_num_threads(1)


def make_splits(n_train=240, n_eval=60, features=12, classes=3, seed=0) -> DataSplits:
    """A linearly separable-ish toy problem: class = argmax of a fixed projection (+ noise)."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(features, classes, generator=g)

    def part(n):
        x = torch.randn(n, features, generator=g)
        y = (x @ proj + 0.3 * torch.randn(n, classes, generator=g)).argmax(dim=1)
        return x, y

    (tx, ty), (vx, vy), (sx, sy) = part(n_train), part(n_eval), part(n_eval)
    return DataSplits(name="toy", train_x=tx, train_y=ty, val_x=vx, val_y=vy, test_x=sx, test_y=sy,
                      input_shape=(features,), num_classes=classes, source="generated in tests")


def strip_times(node):
    """A summary / record with every ``wall_time*`` field dropped (timings differ run to run)."""
    if isinstance(node, dict):
        return {k: strip_times(v) for k, v in node.items() if not k.startswith("wall_time")}
    if isinstance(node, list):
        return [strip_times(v) for v in node]
    return node


class Interrupt(Exception):
    """Raised by `interrupt_at` to simulate a kill in the middle of training."""


def interrupt_at(iteration: int):
    """An ``on_step`` callback for `train` that raises `Interrupt` after ``iteration`` steps."""

    def on_step(done: int) -> None:
        if done == iteration:
            raise Interrupt

    return on_step


@pytest.fixture
def toy_splits() -> DataSplits:
    return make_splits()


def tiny_mlp(seed=0, features=12, classes=3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, classes))
