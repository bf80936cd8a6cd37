"""`bench`: an exported model, dense against deployed (and against compacted), on this machine.

For every batch size the dense model (plain PyTorch modules, zeros included: for a compacted ticket
its registered full-width architecture, the network training produced; the compacted network run
densely is timed too) and the deployed one (`load`, i.e. `sparsify`) run on the same seeded input
in alternation, ``repeats``
rounds after a warm-up; medians are reported, end to end and per sparsified layer (each layer timed
on the input it really receives, dense ``F.linear`` against its chosen path). Peak memory is the
peak resident set of a fresh process that loads the model and runs the largest batch, so neither
side inherits the other's allocations. File sizes come from the export.

A compacted export (a channel ticket, a transformer with heads and MLP channels removed) also gets
``structured``: its original full-width architecture ("dense": a vision network with random
weights of the dense shape, a transformer with the compacted weights scattered back at their
places and zeros elsewhere — the masked model itself) against the compacted network, both plain
PyTorch modules, on torch (the bench device) and on onnxruntime's CPU provider when it is installed
(both networks exported to ONNX in a temporary directory; an ``onnx`` export's own ``model.onnx``
is used for the compacted side); convnets also with both sides' weights in
``torch.channels_last`` (``torch_channels_last``), the layout oneDNN prefers for narrow layers. Vision networks run at ``batch_sizes``; transformers one sequence
of each of ``tokens`` tokens (bounded by the context), and causal LMs also decode
``decode_tokens`` tokens greedily with the KV cache through ``generate`` (tokens/s; both sides
produce the same tokens, recorded). Each row gives the MACs removed (`ticketlab.flops` for vision,
`compact_hf.transformer_macs` for transformers) beside the time saved, and their ratio:
``time_saved_over_macs_removed`` = (1 - compacted / dense time) / (1 - compacted / dense MACs).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TicketlabError
from ..files import write_json
from ..user_code import trusted_user_code
from .conv import SparseConv2d
from .execute import FusedSparseMLP, SparseLinear, execution_plan
from .export import example_batch
from .load import load
from .package import WEIGHTS_FILE, read_package

DEFAULT_SEQLEN = 64
#: Sequence lengths of the structured rows of a transformer, and tokens decoded per run.
DEFAULT_TOKENS: tuple[int, ...] = (128, 1024)
DEFAULT_DECODE_TOKENS = 32


def make_inputs(record: dict[str, Any], model: nn.Module, batch: int, seqlen: int) -> dict[str, torch.Tensor]:
    """Seeded inputs: an image / feature batch, or random token ids (batch, seqlen)."""
    if record["kind"] == "vision":
        return {"x": example_batch(record["spec"], batch, seed=batch)}
    vocab = int(getattr(model.config, "vocab_size", 1000))
    generator = torch.Generator().manual_seed(batch)
    return {"input_ids": torch.randint(0, vocab, (batch, seqlen), generator=generator)}


def _output(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(inputs["x"]) if "x" in inputs else model(**inputs)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(runners: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per runner, the runners alternating each round (2 warm-up rounds)."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(repeats + 2):
        for name, run in runners.items():
            _sync(device)
            started = time.perf_counter()
            run()
            _sync(device)
            if round_index >= 2:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _dense_equivalent(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(module, SparseLinear):
        return lambda x: nn.functional.linear(x, module.weight, module.bias)
    if isinstance(module, SparseConv2d):
        return module._dense
    return lambda x: module._dense(x.flatten(1) if module.flatten else x)


def _capture_layer_inputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The input each sparsified module receives on ``inputs`` (one forward pass with hooks)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (SparseLinear, FusedSparseMLP, SparseConv2d)):
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, name=name: seen.setdefault(name, args[0].detach())))
    try:
        with torch.no_grad():
            _output(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _layer_rows(model: nn.Module, inputs: dict[str, torch.Tensor], batch: int, repeats: int,
                device: torch.device) -> list[dict[str, Any]]:
    rows = []
    captured = _capture_layer_inputs(model, inputs)
    for name, module in model.named_modules():
        if name not in captured:
            continue
        x = captured[name]
        with torch.no_grad():
            medians = alternate({"dense": lambda: _dense_equivalent(module)(x), "deployed": lambda: module(x)},
                                repeats, device)
        if isinstance(module, SparseConv2d):
            kernel, density = f"conv:{module.plan_for(x.shape[0], tuple(x.shape[1:]))}", module.density
        elif isinstance(module, SparseLinear):
            kernel, density = module.plan_for(x.numel() // module.in_features), module.density
        else:
            kernel = f"mlp:{module.plan_for(x.shape[0])}"
            density = sum(float((l.weight != 0).sum()) for l in module.layers) / sum(l.weight.numel() for l in module.layers)
        rows.append({"name": name, "density": density, "kernel": kernel, "batch": batch, "dense_ms": 1e3 * medians["dense"],
                     "deployed_ms": 1e3 * medians["deployed"]})
    return rows


def peak_memory(directory: Path, batch: int, seqlen: int, *, sparse: bool, threads: int) -> int | None:
    """Peak RSS (bytes) of a fresh process that loads ``directory`` and runs one batch (Linux/macOS);
    the process trusts the user code this one trusts (`ticketlab.user_code`)."""
    code = ("import sys,torch;torch.set_num_threads(int(sys.argv[4]))\n"
            "from ticketlab.user_code import trust_user_code;trust_user_code(*sys.argv[6:])\n"
            "from ticketlab.deploy.bench import run_once\n"
            "from ticketlab.memory import peak_rss_bytes\n"
            "run_once(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[5] == '1')\n"
            "print(peak_rss_bytes())")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(directory), str(batch), str(seqlen), str(threads),
                               "1" if sparse else "0", *trusted_user_code()], capture_output=True, text=True, timeout=600,
                              env=dict(os.environ))
        return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def run_once(directory: str, batch: int, seqlen: int, sparse: bool) -> None:
    """Load and run one batch (the body of the peak-memory child process)."""
    record, _ = read_package(directory)
    rows = batch * (seqlen if record["kind"] == "hf" else 1)
    model = load(directory, sparse=sparse, batch_sizes=(rows,)) if sparse else load(directory, sparse=False)
    with torch.no_grad():
        _output(model, make_inputs(record, model, batch, seqlen))


def _original_architecture(record: dict[str, Any], device: torch.device) -> nn.Module | None:
    """For a compacted ticket, its registered full-width architecture (random weights: a dense
    network's time does not depend on its values) — the network a user has before deploying."""
    compaction = record.get("compaction") or {}
    if record["kind"] != "vision" or not compaction.get("removed_units"):
        return None
    from .export import build_vision_model

    return build_vision_model(record["spec"]).to(device)


def bench(directory: str | Path, *, batch_sizes: Sequence[int] = (1, 8, 64), device: str = "cpu",
          threads: int | None = None, repeats: int = 20, seqlen: int = DEFAULT_SEQLEN,
          memory: bool = True, tokens: Sequence[int] = DEFAULT_TOKENS,
          decode_tokens: int = DEFAULT_DECODE_TOKENS, onnx: bool = True) -> dict[str, Any]:
    """Time dense vs deployed (and, for a compacted export, dense vs compacted on torch and
    onnxruntime: `structured_bench`) on this machine; returns the record written as ``bench.json``."""
    directory = Path(directory)
    if threads is not None:
        torch.set_num_threads(threads)
    record, _ = read_package(directory)
    target = torch.device(device)
    dense = load(directory, sparse=False).to(target)
    check_seqlen(record, dense, seqlen)
    deployed = load(directory, sparse=False).to(target)
    original = _original_architecture(record, target)
    from .execute import sparsify

    rows_per_batch = [b * (seqlen if record["kind"] == "hf" else 1) for b in batch_sizes]
    example = example_batch(record["spec"], 1).to(target) if record["kind"] == "vision" else None
    sparsify(deployed, batch_sizes=rows_per_batch, example=example)
    end_to_end, layers, max_diff = [], [], 0.0
    for batch in batch_sizes:
        inputs = {k: v.to(target) for k, v in make_inputs(record, dense, batch, seqlen).items()}
        runners = {"dense": lambda: _output(original or dense, inputs), "deployed": lambda: _output(deployed, inputs)}
        if original is not None:
            runners["compacted"] = lambda: _output(dense, inputs)
        with torch.no_grad():
            max_diff = max(max_diff, float((_output(dense, inputs) - _output(deployed, inputs)).abs().max()))
            medians = alternate(runners, repeats, target)
        row = {"batch": batch, "dense_ms": 1e3 * medians["dense"], "deployed_ms": 1e3 * medians["deployed"],
               "speedup": medians["dense"] / medians["deployed"]}
        if original is not None:
            row["compacted_dense_ms"] = 1e3 * medians["compacted"]
        end_to_end.append(row)
        layers += _layer_rows(deployed, inputs, batch, max(5, repeats // 2), target)
    result = {
        "model": str(directory), "device": str(target), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "repeats": repeats,
        "seqlen": seqlen if record["kind"] == "hf" else None,
        "file_bytes": {"dense": record["sizes"]["dense_file"], "compact": _compact_bytes(directory, record)},
        "end_to_end": end_to_end, "layers": layers, "max_abs_diff": max_diff,
        "plan": execution_plan(deployed),
    }
    if (record.get("compaction") or {}).get("removed_units"):
        from .structured_bench import structured_bench

        result["structured"] = structured_bench(directory, record, dense, target, batch_sizes=batch_sizes,
                                                repeats=repeats, tokens=tokens, decode_tokens=decode_tokens,
                                                onnx=onnx)
    if memory and target.type == "cpu":
        largest = max(batch_sizes)
        result["peak_memory_bytes"] = {
            "dense": peak_memory(directory, largest, seqlen, sparse=False, threads=torch.get_num_threads()),
            "deployed": peak_memory(directory, largest, seqlen, sparse=True, threads=torch.get_num_threads())}
    return result


def _compact_bytes(directory: Path, record: dict[str, Any]) -> int:
    weights = directory / (WEIGHTS_FILE if record.get("layout") != "hf" else "model.safetensors")
    return weights.stat().st_size


def bench_figure(result: dict[str, Any]) -> Any:
    """End-to-end speed-up of the deployed model over dense against batch size (log2 x axis ticked
    at the batch sizes measured), the dense speed 1.0 as a dashed line, legend outside the axes."""
    from ..plotting import DENSE_STYLE, legend_outside, pyplot, style

    fig, ax = pyplot().subplots(figsize=(7.5, 4))
    batches = [row["batch"] for row in result["end_to_end"]]
    ax.plot(batches, [row["speedup"] for row in result["end_to_end"]], label="end to end (deployed / dense)",
            **style(0))
    ax.axhline(1.0, **DENSE_STYLE, label="dense (1.0)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.set_xlabel("batch size" + (f" (x {result['seqlen']} tokens)" if result.get("seqlen") else ""))
    ax.set_ylabel("speed-up over dense (median)")
    ax.set_title(f"Deployed sparse {Path(result['model']).name} on {result['device']}, {result['threads']} thread(s)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    legend_outside(ax)
    return fig


def write_outputs(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``bench.json`` and ``bench.png`` (`bench_figure`) in ``out``."""
    from ..plotting import save

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", result)
    return out / "bench.json", save(bench_figure(result), out / "bench.png")


def format_bench(result: dict[str, Any]) -> str:
    """The table the CLI prints."""
    files = result["file_bytes"]
    lines = [f"{result['model']} on {result['device']} ({result['threads']} threads, torch {result['torch']}, "
             f"medians of {result['repeats']} alternated runs)",
             f"weights file: {files['compact']:,} bytes deployed vs {files['dense']:,} dense "
             f"({files['compact'] / max(1, files['dense']):.3f}x); largest output difference {result['max_abs_diff']:.2e}",
             "", f"{'batch':>6} {'dense ms':>10} {'deployed ms':>12} {'speed-up':>9}"]
    compacted = any("compacted_dense_ms" in row for row in result["end_to_end"])
    if compacted:
        lines[-1] += f" {'compacted dense ms':>19}"
    for row in result["end_to_end"]:
        line = f"{row['batch']:>6} {row['dense_ms']:>10.3f} {row['deployed_ms']:>12.3f} {row['speedup']:>8.2f}x"
        lines.append(line + (f" {row['compacted_dense_ms']:>19.3f}" if compacted else ""))
    if result.get("structured"):
        from .structured_bench import format_structured

        lines += ["", *format_structured(result["structured"])]
    memory = result.get("peak_memory_bytes")
    if memory and memory.get("dense") and memory.get("deployed"):
        lines.append(f"peak memory (fresh process, largest batch): dense {memory['dense'] / 2**20:.1f} MiB, "
                     f"deployed {memory['deployed'] / 2**20:.1f} MiB")
    if result["layers"]:
        lines += ["", f"{'layer':<40} {'density':>8} {'kernel':>16} {'batch':>6} {'dense ms':>9} {'deployed ms':>12}"]
        for row in result["layers"]:
            lines.append(f"{row['name'][:40]:<40} {row['density']:>8.4f} {row['kernel']:>16} {row['batch']:>6} "
                         f"{row['dense_ms']:>9.3f} {row['deployed_ms']:>12.3f}")
    return "\n".join(lines)


def check_seqlen(record: dict[str, Any], model: nn.Module, seqlen: int) -> None:
    """A transformer's ``seqlen`` must fit its context length (``max_position_embeddings`` or the
    equivalent in its config): beyond it, learned position embeddings fail and rotary ones run on
    (attention grows with the square of ``seqlen``) for as long as a user waits."""
    if record["kind"] != "hf":
        return
    from ..llm.adapters import context_length

    context = context_length(model)
    if context is not None and seqlen > context:
        raise TicketlabError(f"--seqlen {seqlen} is beyond the model's context length of {context} tokens "
                             f"(max_position_embeddings or its equivalent in the config); give at most {context}.")


def check_batch_sizes(values: Sequence[int]) -> tuple[int, ...]:
    if not values or any(v < 1 or v > 1 << 16 for v in values):
        raise TicketlabError("--batch-sizes needs positive batch sizes up to 65536, e.g. 1,8,64.")
    return tuple(sorted(set(values)))
