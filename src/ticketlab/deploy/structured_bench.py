"""Dense against compacted: what removing channels and heads buys on this machine (``bench``'s
``structured`` record; see `ticketlab.deploy.bench` for what each side is).

Every measurement alternates the two sides round by round (two warm-up rounds, then ``repeats``
timed ones) and reports medians, so a busy machine slows both alike. The MACs of each side are
counted, not measured, and ``time_saved_over_macs_removed`` says how much of the arithmetic
removed turned into time saved (1.0: time fell exactly as the MACs did).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bench import alternate
from .export import build_vision_model, example_batch


def speed_row(dense_s: float, compacted_s: float, dense_macs: int, compacted_macs: int,
              **keys: Any) -> dict[str, Any]:
    """One row: times in ms, speed-up, the fractions of MACs removed and of time saved, and
    their ratio (None when no MAC was removed)."""
    removed = 1 - compacted_macs / dense_macs if dense_macs else 0.0
    saved = 1 - compacted_s / dense_s if dense_s else 0.0
    return {**keys, "dense_ms": 1e3 * dense_s, "compacted_ms": 1e3 * compacted_s, "speedup": dense_s / compacted_s,
            "dense_macs": dense_macs, "compacted_macs": compacted_macs, "macs_removed": removed,
            "time_saved": saved, "time_saved_over_macs_removed": saved / removed if removed > 0 else None}


def _timed(dense: Callable[[], Any], compacted: Callable[[], Any], repeats: int,
           device: torch.device) -> tuple[float, float]:
    with torch.no_grad():
        medians = alternate({"dense": dense, "compacted": compacted}, repeats, device)
    return medians["dense"], medians["compacted"]


# --- the two sides ------------------------------------------------------------------------------------
def _dense_transformer(directory: Path, record: dict[str, Any], compacted: nn.Module) -> nn.Module:
    """The original architecture holding the compacted weights at their places (zeros elsewhere)."""
    from ..llm.io import _transformers, kind_from_config, quiet_transformers
    from .compact_hf import expand_to_groups

    compaction = record["compaction"]
    config = copy.deepcopy(compacted.config)
    if record.get("layout") == "hf":        # its config holds the compacted widths: undo the changes
        for name, value in (compaction.get("config_before") or {}).items():
            setattr(config, name, value)
    else:
        from .load import _hf_config

        config = _hf_config(directory)
    transformers = _transformers()
    auto = transformers.AutoModelForCausalLM if kind_from_config(config) == "causal" else transformers.AutoModel
    with quiet_transformers():
        dense = auto.from_config(config)
    from .package import SPEC_FILE

    state = expand_to_groups(dense, compacted.state_dict(), compaction["kept_groups"], repr(str(directory / SPEC_FILE)))
    dense.load_state_dict(state, strict=False)
    if hasattr(dense, "tie_weights"):
        dense.tie_weights()
    return dense.eval()


def _onnx_pair(directory: Path, record: dict[str, Any], dense: nn.Module, compacted: nn.Module,
               scratch: Path, threads: int) -> tuple[Any, Any, Sequence[str]]:
    """onnxruntime sessions of both sides (the export's own ``model.onnx`` for the compacted one
    when it has one), and the input names."""
    from . import programs

    shape = record["spec"].get("input_shape")
    sessions = []
    for name, model in (("dense", dense), ("compacted", compacted)):
        module, signature = programs.portable(record["kind"], copy.deepcopy(model).cpu().eval(), shape)
        own = directory / programs.ONNX_FILE
        if name == "compacted" and (record.get("program") or {}).get("file") == programs.ONNX_FILE and own.is_file():
            path = own
        else:
            path = scratch / f"{name}.onnx"
            programs.write_onnx(module, signature, path)
        sessions.append(programs.onnx_session(path, threads))
    return sessions[0], sessions[1], signature.names


# --- vision ------------------------------------------------------------------------------------------
def _vision(directory: Path, record: dict[str, Any], compacted: nn.Module, target: torch.device,
            batch_sizes: Sequence[int], repeats: int, onnx: bool) -> dict[str, Any]:
    from ..flops import network_cost

    spec = record["spec"]
    shape = tuple(spec["input_shape"])
    dense = build_vision_model(spec).to(target)
    dense_macs = network_cost(dense, shape).dense_macs
    compacted_macs = network_cost(compacted, shape).dense_macs
    out: dict[str, Any] = {"kind": "vision", "macs": {"dense": dense_macs, "compacted": compacted_macs,
                                                      "ratio": compacted_macs / dense_macs, "per": "example"},
                           "torch": [], "onnxruntime": None}
    for batch in batch_sizes:
        x = example_batch(spec, batch, seed=batch).to(target)
        d, c = _timed(lambda: dense(x), lambda: compacted(x), repeats, target)
        out["torch"].append(speed_row(d, c, dense_macs * batch, compacted_macs * batch, batch=batch))
    if any(isinstance(m, nn.Conv2d) for m in compacted.modules()):
        _channels_last_rows(out, dense, compacted, spec, target, batch_sizes, repeats, dense_macs, compacted_macs)
    _onnx_rows(out, onnx, directory, record, dense, compacted,
               [((example_batch(spec, b, seed=b),), {"batch": b}, b) for b in batch_sizes], repeats,
               dense_macs, compacted_macs)
    return out


def _channels_last_rows(out: dict[str, Any], dense: nn.Module, compacted: nn.Module, spec: dict[str, Any],
                        target: torch.device, batch_sizes: Sequence[int], repeats: int, dense_macs: int,
                        compacted_macs: int) -> None:
    """``out["torch_channels_last"]``: both sides with ``memory_format=torch.channels_last`` weights
    (inputs as given): oneDNN then convolves narrow layers without reordering every activation,
    which a compacted convnet's odd widths (19, 38 channels) otherwise pay at every layer."""
    dense_cl = copy.deepcopy(dense).to(memory_format=torch.channels_last)
    compacted_cl = copy.deepcopy(compacted).to(memory_format=torch.channels_last)
    rows = []
    for batch in batch_sizes:
        x = example_batch(spec, batch, seed=batch).to(target)
        d, c = _timed(lambda: dense_cl(x), lambda: compacted_cl(x), repeats, target)
        rows.append(speed_row(d, c, dense_macs * batch, compacted_macs * batch, batch=batch))
    out["torch_channels_last"] = rows


def _onnx_rows(out: dict[str, Any], onnx: bool, directory: Path, record: dict[str, Any], dense: nn.Module,
               compacted: nn.Module, cases: list[tuple[tuple[torch.Tensor, ...], dict[str, Any], int]],
               repeats: int, dense_macs: int | Callable[[int], int],
               compacted_macs: int | Callable[[int], int]) -> None:
    """Fill ``out["onnxruntime"]`` (or the reason it is missing): each case is (inputs, row keys,
    the MACs multiplier or token count)."""
    from .programs import onnx_available, onnx_runner

    reason = None if onnx else "skipped (--no-onnx)"
    reason = reason or onnx_available()
    if reason is not None:
        out["onnxruntime_skipped"] = reason
        return
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="ticketlab-bench-") as scratch:
        dense_session, compacted_session, names = _onnx_pair(directory, record, dense, compacted, Path(scratch),
                                                             threads)
        run_dense, run_compacted = onnx_runner(dense_session, names), onnx_runner(compacted_session, names)
        rows = []
        for inputs, keys, n in cases:
            d, c = _timed(lambda: run_dense(*inputs), lambda: run_compacted(*inputs), repeats, torch.device("cpu"))
            dm = dense_macs(n) if callable(dense_macs) else dense_macs * n
            cm = compacted_macs(n) if callable(compacted_macs) else compacted_macs * n
            rows.append(speed_row(d, c, dm, cm, **keys))
    import onnxruntime

    out["onnxruntime"] = rows
    out["onnxruntime_version"] = onnxruntime.__version__


# --- transformers ------------------------------------------------------------------------------------
def _token_lengths(model: nn.Module, tokens: Sequence[int]) -> list[int]:
    from ..llm.adapters import context_length

    context = context_length(model)
    return sorted({min(t, context) if context else t for t in tokens})


def _inputs(model: nn.Module, length: int, causal: bool) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(length)
    ids = torch.randint(0, int(model.config.vocab_size), (1, length), generator=generator)
    return (ids,) if causal else (ids, torch.ones_like(ids))


def _forward(model: nn.Module, inputs: tuple[torch.Tensor, ...], causal: bool) -> Any:
    if causal:
        return model(input_ids=inputs[0], use_cache=False)
    return model(input_ids=inputs[0], attention_mask=inputs[1])


def _transformer(directory: Path, record: dict[str, Any], compacted: nn.Module, target: torch.device,
                 repeats: int, tokens: Sequence[int], decode_tokens: int, onnx: bool) -> dict[str, Any]:
    from ..llm.io import kind_from_config
    from .compact_hf import transformer_macs

    causal = kind_from_config(compacted.config) == "causal"
    dense = _dense_transformer(directory, record, compacted).to(target)
    lengths = _token_lengths(compacted, tokens)
    out: dict[str, Any] = {"kind": "hf", "macs": {
        "per": "sequence", **{str(t): {"dense": transformer_macs(dense, t), "compacted": transformer_macs(compacted, t),
                                       "ratio": transformer_macs(compacted, t) / transformer_macs(dense, t)}
                              for t in lengths}}, "torch": [], "onnxruntime": None}
    for length in lengths:
        inputs = tuple(t.to(target) for t in _inputs(compacted, length, causal))
        d, c = _timed(lambda: _forward(dense, inputs, causal), lambda: _forward(compacted, inputs, causal), repeats,
                      target)
        out["torch"].append(speed_row(d, c, transformer_macs(dense, length), transformer_macs(compacted, length),
                                      batch=1, tokens=length))
    cases = [(_inputs(compacted, t, causal), {"batch": 1, "tokens": t}, t) for t in lengths]
    _onnx_rows(out, onnx, directory, record, dense, compacted, cases, repeats,
               lambda t: transformer_macs(dense, t), lambda t: transformer_macs(compacted, t))
    if causal:
        out["decode"] = decode_speed(dense, compacted, target, decode_tokens, max(3, repeats // 4))
    return out


def decode_speed(dense: nn.Module, compacted: nn.Module, device: torch.device, new_tokens: int,
                 repeats: int) -> dict[str, Any]:
    """Greedy decoding of ``new_tokens`` tokens (exactly: no early stop) after a short seeded
    prompt, with the KV cache, through ``generate``: tokens/s of each side, alternated."""
    from ..llm.adapters import context_length
    from ..llm.io import quiet_transformers

    context = context_length(compacted) or 4 * new_tokens
    prompt_length = max(1, min(16, context // 4))
    new_tokens = max(1, min(new_tokens, context - prompt_length))
    prompt = _inputs(compacted, prompt_length, True)[0].to(device)
    generated: dict[str, torch.Tensor] = {}

    def run(name: str, model: nn.Module) -> Callable[[], Any]:
        def go() -> None:
            generated[name] = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                             use_cache=True, pad_token_id=0)
        return go

    with quiet_transformers(), torch.no_grad():
        medians = alternate({"dense": run("dense", dense), "compacted": run("compacted", compacted)}, repeats, device)
    same = torch.equal(generated["dense"], generated["compacted"])
    return {"prompt_tokens": prompt_length, "new_tokens": new_tokens, "repeats": repeats,
            "dense_tokens_per_s": new_tokens / medians["dense"],
            "compacted_tokens_per_s": new_tokens / medians["compacted"],
            "speedup": medians["dense"] / medians["compacted"], "same_tokens": same}


def structured_bench(directory: Path, record: dict[str, Any], compacted: nn.Module, target: torch.device, *,
                     batch_sizes: Sequence[int], repeats: int, tokens: Sequence[int], decode_tokens: int,
                     onnx: bool) -> dict[str, Any]:
    """The ``structured`` record of a compacted export (see the module docstring)."""
    compacted = compacted.eval()
    if record["kind"] == "vision":
        return _vision(directory, record, compacted, target, batch_sizes, repeats, onnx)
    return _transformer(directory, record, compacted, target, repeats, tokens, decode_tokens, onnx)


def format_structured(result: dict[str, Any]) -> list[str]:
    """The lines ``ticketlab bench`` prints for the ``structured`` record."""
    what = "batch" if result["kind"] == "vision" else "tokens"
    nhwc = " (NHWC: both with channels_last weights)" if result.get("torch_channels_last") else ""
    lines = [f"dense (original width) vs compacted, plain modules{nhwc}:",
             f"{'runtime':<12} {what:>6} {'dense ms':>10} {'compacted ms':>13} {'speed-up':>9} {'MACs removed':>13} "
             f"{'time saved':>11} {'saved/removed':>14}"]
    for runtime in ("torch", "torch_channels_last", "onnxruntime"):
        for row in result.get(runtime) or []:
            ratio = row["time_saved_over_macs_removed"]
            shown = "torch (NHWC)" if runtime == "torch_channels_last" else runtime
            lines.append(f"{shown:<12} {row[what]:>6} {row['dense_ms']:>10.3f} {row['compacted_ms']:>13.3f} "
                         f"{row['speedup']:>8.2f}x {100 * row['macs_removed']:>12.1f}% {100 * row['time_saved']:>10.1f}% "
                         f"{'-' if ratio is None else f'{ratio:.2f}':>14}")
    if result.get("onnxruntime_skipped"):
        lines.append(f"onnxruntime: {result['onnxruntime_skipped']}")
    decode = result.get("decode")
    if decode:
        lines.append(f"decode ({decode['new_tokens']} tokens after {decode['prompt_tokens']}, greedy, KV cache): "
                     f"dense {decode['dense_tokens_per_s']:.1f} tokens/s, compacted "
                     f"{decode['compacted_tokens_per_s']:.1f} tokens/s ({decode['speedup']:.2f}x; same tokens: "
                     f"{'yes' if decode['same_tokens'] else 'no'})")
    return lines


__all__ = ["decode_speed", "format_structured", "speed_row", "structured_bench"]
