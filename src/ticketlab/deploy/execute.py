"""`sparsify`: run every pruned Linear layer (and small ReLU MLPs as a whole) with the fastest backend
measured on this machine, per layer and batch-size bucket, never slower than dense beyond noise.

How a choice is made: for a layer and a bucket of ``rows`` input rows (1, 8, 64, 512 on the CPU,
larger inputs using the 512 decision; on a CUDA device also 4096 and 32768, since 2:4 pays only for
long prefills), every available backend (`ticketlab.deploy.kernels`) runs on the same random
input in alternation, a few rounds after a warm-up, and the one with the lowest median wins — but a
sparse backend replaces ``dense`` only if it is at least `MARGIN` faster, so noise cannot make a
layer slower. Choices are cached in memory and on disk (``~/.cache/ticketlab/plans.json``, see `_cache_path`)
under a key of the machine, torch version, thread count, layer shape, dtype and density, so the
next process and identical layers do not measure again. Measuring happens in `sparsify` for the
``batch_sizes`` it is given, and lazily (once) for a bucket first met in ``forward``.

Tiny networks are bound by per-call overhead, not arithmetic (dense LeNet-300-100 takes ~30 µs per
sample here): a chain ``Linear → ReLU → … → Linear`` inside an ``nn.Sequential`` is therefore also
offered as one fused C++ call (`FusedSparseMLP`), measured against running its layers one by one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_path
from .kernels import BACKENDS, kernel_status, load_extension

#: Row counts a decision is measured for; an input uses the first bucket that holds it (else the last).
BUCKETS: tuple[int, ...] = (1, 8, 64, 512)
#: The same on a CUDA device, where 2:4 beats dense only from ~16k rows (H200, LLaMA-7B MLP shapes).
CUDA_BUCKETS: tuple[int, ...] = (1, 8, 64, 512, 4096, 32768)
#: A sparse backend must beat dense by this fraction to be chosen.
MARGIN = 0.05
#: Layers with more than this fraction of non-zero weights stay plain ``nn.Linear``.
MAX_DENSITY = 0.9
_memory_cache: dict[str, str] = {}


def bucket_of(rows: int, device_type: str = "cpu") -> int:
    """The bucket whose decision inputs of ``rows`` rows use on a device of ``device_type``."""
    buckets = CUDA_BUCKETS if device_type == "cuda" else BUCKETS
    return next((b for b in buckets if rows <= b), buckets[-1])


# --- the on-disk plan cache --------------------------------------------------------------------------
def _cache_path() -> Path:
    """``$TICKETLAB_CACHE_DIR/plans.json``, by default under ``$XDG_CACHE_HOME/ticketlab``."""
    explicit = os.environ.get("TICKETLAB_CACHE_DIR")
    if explicit:
        return Path(explicit) / "plans.json"
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "ticketlab" / "plans.json"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}|{os.cpu_count()}|torch {torch.__version__}"


def _read_disk_cache() -> dict[str, str]:
    try:
        data = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}


def _write_disk_cache(key: str, value: str) -> None:
    try:
        data = _read_disk_cache()
        data[key] = value
        path = _cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
    except OSError:  # a read-only home: the in-memory cache still works
        pass


def _key(kind: str, signature: Sequence[Any], rows: int, candidates: Sequence[str]) -> str:
    text = json.dumps([_machine(), torch.get_num_threads(), kind, list(signature), rows, list(candidates)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --- measuring -------------------------------------------------------------------------------------------
def _waiter(device: torch.device | None) -> Callable[[], None]:
    """What to call after a run so the timer sees the work, not just its launch: a CUDA device's
    synchronize (kernels run asynchronously), nothing for the CPU (its calls return when done)."""
    if device is None or device.type != "cuda":
        return lambda: None
    return lambda: torch.cuda.synchronize(device)


def _median_times(runners: dict[str, Callable[[], Any]], repeats: int,
                  device: torch.device | None = None) -> dict[str, float]:
    """Median seconds of each runner, run in alternation (``repeats`` rounds after 2 warm-ups),
    each timed up to the end of its work on ``device`` (see `_waiter`)."""
    wait = _waiter(device)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(repeats + 2):
        for name, run in runners.items():
            started = time.perf_counter()
            run()
            wait()
            if round_index >= 2:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def pick(medians: dict[str, float]) -> str:
    """The fastest runner, but ``dense`` unless the fastest beats it by `MARGIN`."""
    best = min(medians, key=medians.get)
    if "dense" in medians and best != "dense" and medians[best] > (1 - MARGIN) * medians["dense"]:
        return "dense"
    return best


def choose(kind: str, signature: Sequence[Any], rows: int, runners: dict[str, Callable[[], Any]],
           repeats: int = 7, device: torch.device | None = None) -> str:
    """The cached decision for this signature and bucket, or measure ``runners`` (whose work runs on
    ``device``; None: the CPU) and remember it."""
    key = _key(kind, signature, rows, sorted(runners))
    if key in _memory_cache:
        return _memory_cache[key]
    cached = _read_disk_cache().get(key)
    if cached is None or cached not in runners:
        cached = pick(_median_times(runners, repeats, device))
        _write_disk_cache(key, cached)
    _memory_cache[key] = cached
    return cached


# --- one layer -----------------------------------------------------------------------------------------
class SparseLinear(nn.Module):
    """A pruned ``nn.Linear`` run by the backend measured fastest for each batch-size bucket.

    ``weight`` and ``bias`` stay as ordinary tensors (the state dict is the Linear's, and the dense
    path uses them); each backend's packed copy is built the first time it is measured or chosen.
    Gradients are not supported by the sparse backends, so a forward that needs them runs dense.
    """

    def __init__(self, linear: nn.Linear, backends: Sequence[str] | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        names = backends or list(BACKENDS)
        self.candidates = [n for n in names if BACKENDS[n].unavailable(self.weight) is None]
        self.plan: dict[int, str] = {}
        self._packed: dict[str, Any] = {}
        self._by_rows: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}

    @property
    def density(self) -> float:
        return float((self.weight != 0).sum()) / max(1, self.weight.numel())

    def signature(self) -> tuple[Any, ...]:
        return (str(self.weight.device.type), str(self.weight.dtype), self.out_features, self.in_features,
                round(self.density, 3), self.bias is not None)

    def _packed_for(self, name: str) -> Any:
        if name not in self._packed:
            self._packed[name] = BACKENDS[name].pack(self.weight.detach(), None if self.bias is None else self.bias.detach())
        return self._packed[name]

    def _runner(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        backend, packed = BACKENDS[name], self._packed_for(name)
        return lambda x: backend.run(packed, x)

    def plan_for(self, rows: int, repeats: int = 7) -> str:
        """The backend for inputs of ``rows`` rows (measured now if this bucket is new)."""
        device = self.weight.device
        bucket = bucket_of(rows, device.type)
        if bucket not in self.plan:
            usable = [n for n in self.candidates if BACKENDS[n].batch_sizes()[0] <= bucket <= BACKENDS[n].batch_sizes()[1]]
            x = torch.randn(bucket, self.in_features, generator=torch.Generator().manual_seed(bucket))
            x = x.to(device=device, dtype=self.weight.dtype)
            runners = {n: (lambda run=self._runner(n): run(x)) for n in usable}
            with torch.no_grad():
                self.plan[bucket] = choose("linear", self.signature(), bucket, runners, repeats, device)
            for name in list(self._packed):  # keep only what a plan uses
                if name not in self.plan.values():
                    del self._packed[name]
        return self.plan[bucket]

    def _resolve(self, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
        name = self.plan_for(rows)
        low, high = BACKENDS[name].batch_sizes()
        if name == "dense" or not low <= rows <= high:
            run = self._dense
        else:
            run = self._runner(name)
        self._by_rows[rows] = run
        return run

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return self._dense(x)
        flat = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        run = self._by_rows.get(rows) or self._resolve(rows)
        y = run(flat)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        plan = ", ".join(f"{b}: {n}" for b, n in sorted(self.plan.items())) or "not measured yet"
        return f"in={self.in_features}, out={self.out_features}, density={self.density:.4f}, plan=({plan})"


# --- whole ReLU MLPs ------------------------------------------------------------------------------------
class FusedSparseMLP(nn.Module):
    """``[Flatten →] Linear → ReLU → … → Linear`` (fp32, CPU) as one C++ call, or its layers one by
    one, or dense, whichever was measured fastest for the bucket. Tiny networks spend most of their
    time in Python per call, so the forward is kept minimal: one dict lookup of a ready function
    per distinct row count."""

    def __init__(self, layers: Sequence[SparseLinear], flatten: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.flatten = flatten
        self.in_features, self.out_features = layers[0].in_features, layers[-1].out_features
        self.plan: dict[int, str] = {}
        self._pack = self._build_pack()
        self._by_rows: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}

    def _build_pack(self) -> tuple[Any, ...]:
        from .kernels import csr16_parts

        meta, ptrs, idxs, vals, biases = [], [], [], [], []
        value_offset = ptr_offset = bias_offset = 0
        for layer in self.layers:
            ptr, idx, val = csr16_parts(layer.weight.detach().float())  # one column block: in < 32768
            meta.append((layer.out_features, ptr_offset, value_offset, bias_offset))
            ptrs.append(torch.cat([ptr[:, 0], ptr[-1:, 1]]))             # row starts + end: (out + 1,)
            idxs.append(idx)
            vals.append(val)
            biases.append(layer.bias.detach().float() if layer.bias is not None else torch.zeros(layer.out_features))
            ptr_offset += layer.out_features + 1
            value_offset += idx.numel()
            bias_offset += layer.out_features
        width = max(layer.out_features for layer in self.layers)
        return (torch.tensor(meta, dtype=torch.int32), torch.cat(ptrs).to(torch.int32), torch.cat(idxs),
                torch.cat(vals).float(), torch.cat(biases).contiguous(), width)

    @staticmethod
    def eligible(layers: Sequence[nn.Module]) -> bool:
        """Fp32 CPU Linear layers with int16-addressable inputs, and the C++ kernels loaded."""
        return (len(layers) >= 2 and all(isinstance(l, (nn.Linear, SparseLinear)) for l in layers)
                and all(l.weight.device.type == "cpu" and l.weight.dtype == torch.float32 and l.in_features < 32768
                        for l in layers) and load_extension() is not None)

    def _runners(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        meta, ptr, idx, val, bias, width = self._pack
        kernel = load_extension().mlp_forward

        def fused(x: torch.Tensor) -> torch.Tensor:
            return kernel(meta, ptr, idx, val, bias, x, width)

        return {"dense": self._dense, "fused": fused, "layers": self._layered}

    def _layered(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = nn.functional.linear(x, layer.weight, layer.bias)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x

    def plan_for(self, rows: int, repeats: int = 7) -> str:
        bucket = bucket_of(rows)
        if bucket not in self.plan:
            x = torch.randn(bucket, self.in_features, generator=torch.Generator().manual_seed(bucket))
            for layer in self.layers:
                layer.plan_for(bucket, repeats)
            runners = self._runners()
            timed = {name: (lambda run=run: run(x)) for name, run in runners.items()}
            with torch.no_grad():
                self.plan[bucket] = choose("mlp", [l.signature() for l in self.layers], bucket, timed, repeats)
        return self.plan[bucket]

    def _resolve(self, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
        run = self._runners()[self.plan_for(rows)]
        self._by_rows[rows] = run
        return run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return self._dense(x.flatten(1) if self.flatten else x)
        if self.flatten:
            flat = x.reshape(x.shape[0], -1)
        elif x.dim() == 2:
            flat = x
        else:
            flat = x.reshape(-1, self.in_features)
        if flat.dtype != torch.float32 or not flat.is_contiguous():
            flat = flat.float().contiguous()
        rows = flat.shape[0]
        run = self._by_rows.get(rows) or self._resolve(rows)
        y = run(flat)
        return y if self.flatten or x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        plan = ", ".join(f"{b}: {n}" for b, n in sorted(self.plan.items())) or "not measured yet"
        return f"layers={len(self.layers)}{', flattens its input' if self.flatten else ''}, plan=({plan})"


# --- the model -----------------------------------------------------------------------------------------
def _is_pruned(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and module.weight.dim() == 2 and _density(module.weight) <= MAX_DENSITY


def _relu_chains(sequence: nn.Sequential) -> list[tuple[int, int, bool]]:
    """(start, end, flatten) of ``[Flatten] Linear (ReLU Linear)+`` runs inside ``sequence``."""
    chains, items, i = [], list(sequence), 0
    while i < len(items):
        if isinstance(items[i], nn.Linear):
            j = i
            while j + 2 < len(items) and isinstance(items[j + 1], nn.ReLU) and isinstance(items[j + 2], nn.Linear):
                j += 2
            if j > i:
                flatten = i > 0 and isinstance(items[i - 1], nn.Flatten) and items[i - 1].start_dim == 1 \
                    and items[i - 1].end_dim == -1
                chains.append((i - 1 if flatten else i, j + 1, flatten))
            i = j + 1
        else:
            i += 1
    return chains


def _fuse_sequences(model: nn.Module, backends: Sequence[str] | None) -> int:
    """Replace eligible ReLU MLP runs inside every ``nn.Sequential`` by a `FusedSparseMLP` (and a
    Sequential left holding only that module by the module itself: one Python call less)."""
    fused = 0
    for name, sequence in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Sequential)]:
        items = list(sequence)
        changed = False
        for start, end, flatten in reversed(_relu_chains(sequence)):
            linears = items[start + 1 if flatten else start:end:2]
            if any(_is_pruned(l) for l in linears) and FusedSparseMLP.eligible(linears):
                items[start:end] = [FusedSparseMLP([SparseLinear(l, backends) for l in linears], flatten)]
                fused += 1
                changed = True
        if not changed:
            continue
        if len(items) == 1 and name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, items[0])
            continue
        for key in list(sequence._modules):
            del sequence._modules[key]
        for index, item in enumerate(items):
            sequence.add_module(str(index), item)
    return fused


def sparsify(model: nn.Module, *, batch_sizes: Sequence[int] = (1, 8, 64), backends: Sequence[str] | None = None,
             fuse: bool = True, repeats: int = 7, example: torch.Tensor | None = None) -> nn.Module:
    """Replace the pruned layers of ``model`` (in place) by `SparseLinear`, `FusedSparseMLP` and
    `SparseConv2d` modules and measure their backends for ``batch_sizes`` (input rows: batch ×
    tokens for transformers). Convolutions need their input shapes: with ``example`` (one input
    batch) they are measured here, otherwise at their first forward. Returns ``model``. Layers
    denser than `MAX_DENSITY` stay as they are."""
    from .conv import SparseConv2d

    model.eval()
    if fuse:
        _fuse_sequences(model, backends)
    for name, module in list(model.named_modules()):
        replacement = None
        if _is_pruned(module):
            replacement = SparseLinear(module, backends)
        elif SparseConv2d.eligible(module) and _density(module.weight) <= MAX_DENSITY:
            replacement = SparseConv2d(module)
        if replacement is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, replacement)
    for module in model.modules():
        if isinstance(module, (SparseLinear, FusedSparseMLP)):
            for rows in batch_sizes:
                module.plan_for(int(rows), repeats)
    if example is not None and any(isinstance(m, SparseConv2d) for m in model.modules()):
        with torch.no_grad():
            for batch in batch_sizes:
                model(example[:1].expand(int(batch), *example.shape[1:]).contiguous())
    _unwrap_all_dense(model)
    if example is not None:
        choose_memory_format(model, example[:1].expand(int(max(batch_sizes)), *example.shape[1:]).contiguous(),
                             repeats)
    return model


def choose_memory_format(model: nn.Module, batch: torch.Tensor, repeats: int = 7) -> str:
    """Keep ``model``'s dense convolutions in ``channels_last`` (NHWC) when that runs ``batch``
    faster than the default layout by `MARGIN`, measured here in alternation; returns the layout
    kept (``"contiguous"`` or ``"channels_last"``). The model still takes ordinary NCHW inputs: a
    convolution follows its weight's layout. oneDNN's NHWC kernels pay most where channel counts
    are odd (a compacted ticket's); a model without a dense Conv2d is left as it is."""
    if batch.dim() != 4 or not any(type(m) is nn.Conv2d for m in model.modules()):
        return "contiguous"
    with torch.no_grad():     # one layout, then the other (a copy cannot hold torch's CSR tensors)
        medians = _median_times({"dense": lambda: model(batch)}, repeats, batch.device)
        model.to(memory_format=torch.channels_last)
        medians.update(_median_times({"channels_last": lambda: model(batch)}, repeats, batch.device))
    if pick(medians) == "channels_last":
        return "channels_last"
    model.to(memory_format=torch.contiguous_format)
    return "contiguous"


def _density(weight: torch.Tensor) -> float:
    return float((weight != 0).sum()) / max(1, weight.numel())


def _unwrap_all_dense(model: nn.Module) -> None:
    """A `SparseLinear` whose every measured bucket chose dense goes back to a plain ``nn.Linear``:
    the wrapper's few microseconds per call would only make it slower. (Layers inside a
    `FusedSparseMLP` stay: the fused module measures through them.)"""
    from .conv import SparseConv2d

    inside_fused = {id(l) for m in model.modules() if isinstance(m, FusedSparseMLP) for l in m.layers}
    for name, module in list(model.named_modules()):
        if id(module) in inside_fused or not getattr(module, "plan", None) or set(module.plan.values()) != {"dense"}:
            continue
        if isinstance(module, SparseLinear):
            plain: nn.Module = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                         device=module.weight.device, dtype=module.weight.dtype)
        elif isinstance(module, SparseConv2d):
            out_channels, in_channels = module.weight.shape[:2]
            plain = nn.Conv2d(in_channels, out_channels, module.kernel_size, stride=module.stride,
                              padding=module.padding, dilation=module.dilation, bias=module.bias is not None,
                              device=module.weight.device, dtype=module.weight.dtype)
        else:
            continue
        plain.weight, plain.bias = module.weight, module.bias
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)


def execution_plan(model: nn.Module) -> list[dict[str, Any]]:
    """Every sparsified module: name, kind, density, and the backend chosen per bucket."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, FusedSparseMLP):
            rows.append({"name": name, "kind": "fused-mlp", "layers": len(module.layers),
                         "density": sum(float((l.weight != 0).sum()) for l in module.layers)
                         / sum(l.weight.numel() for l in module.layers),
                         "plan": {str(b): n for b, n in sorted(module.plan.items())}})
        elif isinstance(module, SparseLinear) or type(module).__name__ == "SparseConv2d":
            rows.append({"name": name, "kind": "linear" if isinstance(module, SparseLinear) else "conv2d",
                         "density": module.density, "plan": {str(b): n for b, n in sorted(module.plan.items())}})
    return rows


__all__ = ["BUCKETS", "CUDA_BUCKETS", "FusedSparseMLP", "MARGIN", "SparseLinear", "bucket_of", "choose", "execution_plan",
           "kernel_status", "pick", "sparsify"]
