"""Sparse execution: every backend computes what dense computes (shapes, dtypes, densities, empty
rows, all-pruned layers, density 1), the measured choice falls back to dense when dense is faster,
plans are cached, fused MLPs equal their layers, and `bench` reports what it measured."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ticketlab.deploy import execute
from ticketlab.deploy.execute import FusedSparseMLP, SparseLinear, execution_plan, pick, sparsify
from ticketlab.deploy.kernels import BACKENDS, csr16_parts, kernel_status
from conftest import needs_cuda

SHAPES = [(1, 1), (7, 5), (64, 300), (300, 784), (33, 70000)]
DENSITIES = [0.0, 0.02, 0.3, 0.5, 1.0]


@pytest.fixture(autouse=True)
def private_plan_cache(tmp_path, monkeypatch):
    """Every test measures afresh and writes its plans into its own cache file."""
    monkeypatch.setenv("TICKETLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(execute, "_memory_cache", {})


def sparse_weight(shape, density, seed=0, empty_rows=True):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)
    if empty_rows and shape[0] > 2:
        weight[1] = 0                      # a row with nothing kept
    return weight


def backends_for(weight, rows):
    for name, backend in BACKENDS.items():
        low, high = backend.batch_sizes()
        if backend.unavailable(weight) is None and low <= rows <= high:
            yield name, backend


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("rows", [1, 3, 8, 17, 64])
def test_every_backend_equals_dense_fp32(shape, density, rows):
    weight = sparse_weight(shape, density)
    bias = torch.randn(shape[0])
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(rows))
    reference = nn.functional.linear(x.double(), weight.double(), bias.double())
    scale = max(1.0, float(reference.abs().max()))
    for name, backend in backends_for(weight, rows):
        y = backend.run(backend.pack(weight, bias), x)
        assert y.dtype == torch.float32 and y.shape == (rows, shape[0])
        assert float((y.double() - reference).abs().max()) <= 1e-5 * scale, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_compute_in_fp32(dtype):
    weight = sparse_weight((64, 300), 0.1).to(dtype)
    x = torch.randn(8, 300).to(dtype)
    reference = nn.functional.linear(x.double(), weight.double())
    for name, backend in backends_for(weight, 8):
        y = backend.run(backend.pack(weight, None), x)
        assert y.dtype == dtype
        assert float((y.double() - reference).abs().max()) <= 1e-2 * float(reference.abs().max()), name


def test_cuda_24_refuses_float16_and_cpu_weights_with_a_reason():
    backend = BACKENDS["cuda-2:4"]
    assert "bfloat16" in backend.unavailable(torch.zeros(64, 64, dtype=torch.float16))
    assert "CUDA" in backend.unavailable(torch.zeros(64, 64, dtype=torch.bfloat16))


def test_buckets_reach_long_prefills_only_on_cuda():
    assert execute.bucket_of(20000) == 512 and execute.bucket_of(20000, "cuda") == 32768
    assert execute.bucket_of(3, "cuda") == execute.bucket_of(3) == 8
    assert execute.bucket_of(10**6, "cuda") == 32768


@needs_cuda
def test_cuda_24_equals_dense_with_and_without_bias():
    dtype = torch.bfloat16
    from ticketlab.select import NMPattern, select

    dense = torch.randn(128, 256, generator=torch.Generator().manual_seed(0))
    weight = (dense * select({"w": dense.abs()}, pattern=NMPattern(2, 4))["w"]).to("cuda", dtype)
    backend = BACKENDS["cuda-2:4"]
    if backend.unavailable(weight):
        pytest.skip(backend.unavailable(weight))
    for bias in (None, torch.randn(128, device="cuda", dtype=dtype)):
        packed = backend.pack(weight, bias)
        for rows in (8, 13, 64, 300, 300):   # padded rows, a second bucket, a cached algorithm
            x = torch.randn(rows, 256, device="cuda", dtype=dtype)
            reference = nn.functional.linear(x.float(), weight.float(), None if bias is None else bias.float())
            y = backend.run(packed, x)
            assert y.shape == (rows, 128) and y.dtype == dtype and y.is_contiguous()
            assert float((y.float() - reference).abs().max()) <= 0.02 * float(reference.abs().max())


def test_the_cpp_kernels_are_available_or_say_why():
    status = kernel_status()
    assert status["available"] or "compiler" in status["reason"] or "disabled" in status["reason"]


def test_int16_column_blocks_cover_wide_layers():
    weight = sparse_weight((5, 70000), 0.01)
    ptr, idx, values = csr16_parts(weight)
    assert ptr.shape == (5, 4) and idx.dtype == torch.int16  # 70000 columns: 3 blocks of 32768
    rebuilt = torch.zeros_like(weight)
    for row in range(5):
        for block in range(3):
            start, end = int(ptr[row, block]), int(ptr[row, block + 1])
            rebuilt[row, block * 32768 + idx[start:end].long()] = values[start:end]
    assert torch.equal(rebuilt, weight)


def test_pick_keeps_dense_unless_clearly_faster():
    assert pick({"dense": 1.0, "cpu-csr": 0.97}) == "dense"      # within the noise margin
    assert pick({"dense": 1.0, "cpu-csr": 0.5, "torch-csr": 0.6}) == "cpu-csr"
    assert pick({"dense": 1.0, "torch-csr": 1.5}) == "dense"


def test_a_dense_layer_measures_dense_and_stays_a_plain_linear():
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 8))
    sparsify(model, batch_sizes=(1, 8))
    assert all(isinstance(m, nn.Linear) for m in model if not isinstance(m, nn.Tanh))  # density 1: untouched


def test_when_dense_is_faster_the_choice_is_dense(monkeypatch):
    layer = nn.Linear(300, 64)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(layer.weight.shape) < 0.5)
    real = execute._median_times

    def rigged(runners, repeats, device=None):  # every sparse backend made slow on purpose
        medians = real(runners, 1, device)
        return {n: (t if n == "dense" else 10 * t + 1.0) for n, t in medians.items()}

    monkeypatch.setattr(execute, "_median_times", rigged)
    sparse = SparseLinear(layer)
    assert sparse.plan_for(1) == "dense" and sparse.plan_for(64) == "dense"


def test_plans_are_cached_in_memory_and_on_disk(tmp_path, monkeypatch):
    layer = nn.Linear(300, 64)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(layer.weight.shape) < 0.05)
    first = SparseLinear(layer).plan_for(8)
    calls = []
    monkeypatch.setattr(execute, "_median_times", lambda runners, repeats, device=None: calls.append(1) or {"dense": 1.0})
    assert SparseLinear(layer).plan_for(8) == first                 # same signature: memory cache
    monkeypatch.setattr(execute, "_memory_cache", {})
    assert SparseLinear(layer).plan_for(8) == first and not calls   # a new process: disk cache
    cache = json.loads((tmp_path / "cache" / "plans.json").read_text())
    assert first in cache.values()


def test_sparse_modules_match_dense_and_run_dense_under_autograd():
    layer = nn.Linear(300, 64)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(layer.weight.shape) < 0.05)
    sparse = SparseLinear(layer)
    x = torch.randn(5, 7, 300)                                       # leading dims are kept
    with torch.no_grad():
        assert torch.allclose(sparse(x), layer(x), atol=1e-5)
    x.requires_grad_(True)
    sparse(x).sum().backward()                                       # dense path, gradients flow to x
    assert x.grad is not None


def lenet_ticket(density=0.03, seed=0) -> nn.Module:
    from ticketlab.models import create_model

    model = create_model("lenet300", (1, 28, 28), 10, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(torch.rand(module.weight.shape, generator=g) < density)
                module.bias.normal_(0, 0.1, generator=g)
    return model


@pytest.mark.skipif(not kernel_status()["available"], reason="the C++ kernels are not available here")
def test_a_relu_mlp_is_fused_into_one_call_with_the_same_outputs():
    model = lenet_ticket()
    reference = lenet_ticket()
    sparsify(model, batch_sizes=(1, 64))
    fused = [m for m in model.modules() if isinstance(m, FusedSparseMLP)]
    assert len(fused) == 1 and fused[0].flatten
    for batch in (1, 5, 64, 100):
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = reference(x)
            for runner in fused[0]._runners().values():              # dense, fused and layer by layer
                assert torch.allclose(runner(x.flatten(1)), expected, atol=1e-5)
            assert torch.equal(model(x).argmax(1), expected.argmax(1))
    plan = execution_plan(model)
    assert plan[0]["kind"] == "fused-mlp" and set(plan[0]["plan"]) == {"1", "8", "64", "512"}  # 8, 512: met lazily


def test_bench_writes_its_record(tmp_path, capsys):
    from ticketlab.cli import main
    from ticketlab.deploy.export import export

    assert main(["imp", "--data", "digits", "--steps", "30it", "--rounds", "5", "--rate", "0.6", "--controls", "none",
                 "--quiet", "--out", str(tmp_path / "run")]) == 0
    export(tmp_path / "run", tmp_path / "ticket", round_index=5)
    assert main(["bench", str(tmp_path / "ticket"), "--batch-sizes", "1,4", "--repeats", "3", "--threads", "1",
                 "--out", str(tmp_path / "bench")]) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert {"file_bytes", "end_to_end", "layers", "max_abs_diff"} <= set(record)
    assert record["file_bytes"]["compact"] < record["file_bytes"]["dense"]
    assert [r["batch"] for r in record["end_to_end"]] == [1, 4]
    assert all({"batch", "dense_ms", "deployed_ms", "speedup"} <= set(r) for r in record["end_to_end"])
    assert all({"name", "density", "kernel", "batch", "dense_ms", "deployed_ms"} <= set(r) for r in record["layers"])
    assert record["max_abs_diff"] < 1e-4 and record["peak_memory_bytes"]["dense"] > 0
    assert (tmp_path / "bench" / "bench.png").stat().st_size > 1000 and "speed-up" in out


@pytest.mark.parametrize("args, message", [(["--batch-sizes", "0"], "positive"), (["--batch-sizes", "x"], "Cannot read"),
                                           (["--device", "tpu"], "Unknown device"), (["--repeats", "1"], "at least 3")])
def test_bench_bad_input(tmp_path, capsys, args, message):
    from ticketlab.cli import main

    assert main(["bench", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_bench_on_a_directory_that_is_no_export(tmp_path, capsys):
    from ticketlab.cli import main

    assert main(["bench", str(tmp_path)]) == 2
    assert "no ticketlab.json" in capsys.readouterr().err


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_sparse_conv_equals_dense_conv(stride, padding, dilation):
    from ticketlab.deploy.conv import SparseConv2d

    conv = nn.Conv2d(6, 10, 3, stride=stride, padding=padding, dilation=dilation)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.1)
    sparse = SparseConv2d(conv)
    x = torch.randn(3, 6, 13, 11)
    with torch.no_grad():
        expected = conv(x)
        for name in ["dense", *sparse.candidates]:
            run = sparse._dense if name == "dense" else sparse._sparse(name)
            assert torch.allclose(run(x), expected, atol=1e-5), name
        assert torch.allclose(sparse(x), expected, atol=1e-5)


def test_a_conv_ticket_runs_deployed_with_the_same_predictions():
    from ticketlab.models import create_model

    model = create_model("conv2", (1, 8, 8), 10, seed=0).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_(torch.rand(module.weight.shape) < 0.05)
    reference = create_model("conv2", (1, 8, 8), 10, seed=0).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(16, 1, 8, 8)
    sparsify(model, batch_sizes=(1, 16), example=x[:1])
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
