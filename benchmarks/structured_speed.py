"""Dense against compacted channel / head tickets on this CPU (issue 19, "Export and speed").

The goals, each measured side by side in this one run (the two sides alternate round by round,
two warm-up rounds, then ``--repeats`` timed rounds; medians):

* **Conv-4 and ResNet-20** (CIFAR shape 3x32x32, 10 classes, ``create_model(..., seed=0)``, random
  weights): magnitude (``aggregate="l2"``) keeps 30% of the channels of every coupled family
  (``select_groups`` with ``GroupTarget(per_family=...)``, ``round_half_up(0.3 * size)``; the
  output layer's classes are frozen), the mask is applied and ``compact_model`` removes the dead
  channels. Dense = the full-width masked network, compacted = the smaller dense network, both
  plain modules under ``torch.inference_mode`` (``torch``: as built, NCHW; ``torch-cl``: both
  moved to ``memory_format=torch.channels_last``, inputs left NCHW), and both exported to ONNX
  (`ticketlab.deploy.programs.write_onnx`) and run by onnxruntime's CPU provider with the same
  thread count. Goals at batch 64: compacted >= 2.5x faster in torch and in onnxruntime, and
  time saved >= 80% of the MACs removed (``(1 - t_c / t_d) / (1 - macs_c / macs_d)`` >= 0.8).
* **The tiny LM**: a LLaMA-shaped ``LlamaForCausalLM`` with ``ticketlab llm train-tiny``'s default
  shape (4 blocks, hidden 128, 4 heads, MLP 384, vocabulary 2048, context 128; seeded random
  weights) unless ``--model DIR`` names a Hugging Face directory (e.g. one ``ticketlab llm
  train-tiny`` wrote from ../shared/data/tinyshakespeare.txt). 40% of the groups of every head and
  MLP family go (magnitude; ``round_half_up(0.6 * size)`` kept: 2 of 4 heads, 230 of 384 channels)
  and ``compact_transformer`` removes them. Decoding: a seeded 16-token prompt, ``--new-tokens``
  greedy tokens exactly, KV cache, ``generate`` on both sides (the same tokens, checked); goal:
  compacted >= 1.4x the dense tokens/s at batch 1. Also shown, without a goal: decode at batch 8
  and one forward pass of 128 tokens.

Run (about 2 minutes on 2 CPU cores; needs transformers, and onnx + onnxscript + onnxruntime for
the onnxruntime columns, i.e. pip install 'ticketlab[onnx,llm]'):

    python benchmarks/structured_speed.py [--threads 2] [--repeats 20] [--keep 0.3] [--lm-remove 0.4]
        [--model DIR] [--new-tokens 64] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab.deploy.compact import compact_model
from ticketlab.deploy.programs import onnx_available, onnx_runner, onnx_session, portable, relative_difference, write_onnx
from ticketlab.flops import network_cost
from ticketlab.methods import magnitude_scores
from ticketlab.models import create_model
from ticketlab.select import GroupTarget, select_groups
from ticketlab.structure.layouts import group_layout
from ticketlab.targets import prunable_parameters

SHAPE = (3, 32, 32)
GOALS = {"speedup": 2.5, "saved_over_removed": 0.8, "decode": 1.4}


def alternate(runners: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each runner, alternating round by round after 2 warm-up rounds."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for index in range(repeats + 2):
        for name, run in runners.items():
            started = time.perf_counter()
            run()
            if index >= 2:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


# --- vision ------------------------------------------------------------------------------------------
def channel_ticket(name: str, keep: float) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(masked full-width network, compacted network, what was kept): magnitude keeps ``keep`` of
    every family's channels."""
    model = create_model(name, SHAPE, 10, seed=0).eval()
    example = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    params = prunable_parameters(model)
    layout = group_layout(model, "channel", list(params), example)
    counts = {f.name: max(f.minimum, round_half_up(keep * f.size)) for f in layout}
    mask = select_groups(magnitude_scores(model, params), layout, GroupTarget(per_family=counts), aggregate="l2")
    masked = copy.deepcopy(model)
    mask.apply_(masked)
    compacted, report = compact_model(masked, example[:1])
    with torch.no_grad():
        difference = relative_difference(masked(example), compacted(example))
    assert difference <= 1e-5, f"{name}: compaction changed the outputs by {difference:.2e}"
    return masked, compacted.eval(), {"families": len(counts), "kept_channels": sum(counts.values()),
                                      "channels": sum(f.size for f in layout), "max_relative_difference": difference}


def vision_rows(name: str, keep: float, batches: list[int], repeats: int, threads: int) -> dict[str, Any]:
    masked, compacted, kept = channel_ticket(name, keep)
    dense_macs = network_cost(masked, SHAPE).dense_macs
    compacted_macs = network_cost(compacted, SHAPE).dense_macs
    removed = 1 - compacted_macs / dense_macs
    out: dict[str, Any] = {"model": name, **kept, "dense_macs": dense_macs, "compacted_macs": compacted_macs,
                           "macs_removed": removed, "rows": []}
    sessions = None
    if onnx_available() is None:
        scratch = tempfile.mkdtemp(prefix="structured-speed-")
        sessions = {}
        for side, model in (("dense", masked), ("compacted", compacted)):
            module, signature = portable("vision", copy.deepcopy(model), SHAPE)
            path = Path(scratch) / f"{side}.onnx"
            write_onnx(module, signature, path)
            sessions[side] = onnx_runner(onnx_session(path, threads), signature.names)
    dense_cl = copy.deepcopy(masked).to(memory_format=torch.channels_last)
    compacted_cl = copy.deepcopy(compacted).to(memory_format=torch.channels_last)
    for batch in batches:
        x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            medians = alternate({"dense": lambda: masked(x), "compacted": lambda: compacted(x)}, repeats)
            out["rows"].append({"batch": batch, "runtime": "torch", **_ratios(medians, removed)})
            medians = alternate({"dense": lambda: dense_cl(x), "compacted": lambda: compacted_cl(x)}, repeats)
            out["rows"].append({"batch": batch, "runtime": "torch-cl", **_ratios(medians, removed)})
        if sessions is not None:
            medians = alternate({side: (lambda run=run: run(x)) for side, run in sessions.items()}, repeats)
            out["rows"].append({"batch": batch, "runtime": "onnxruntime", **_ratios(medians, removed)})
    return out


def _ratios(medians: dict[str, float], macs_removed: float) -> dict[str, float]:
    saved = 1 - medians["compacted"] / medians["dense"]
    return {"dense_ms": 1e3 * medians["dense"], "compacted_ms": 1e3 * medians["compacted"],
            "speedup": medians["dense"] / medians["compacted"], "time_saved": saved,
            "saved_over_removed": saved / macs_removed}


# --- the tiny LM -------------------------------------------------------------------------------------
def tiny_lm(model_dir: str | None) -> nn.Module:
    import transformers

    if model_dir:
        from ticketlab.llm.io import load_pretrained

        return load_pretrained(model_dir).model.eval()
    config = transformers.LlamaConfig(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def lm_rows(model_dir: str | None, remove: float, new_tokens: int, repeats: int) -> dict[str, Any]:
    from ticketlab.deploy.compact_hf import compact_transformer, transformer_macs
    from ticketlab.llm.adapters import find_blocks, find_targets
    from ticketlab.structure.transformers import transformer_layout

    model = tiny_lm(model_dir)
    path, blocks = find_blocks(model)
    names = [t.parameter for t in find_targets(model, path, blocks)]
    params = dict(model.named_parameters())
    layout = transformer_layout(model, ("head", "channel"), names)
    counts = {f.name: max(f.minimum, round_half_up((1 - remove) * f.size)) for f in layout}
    mask = select_groups(magnitude_scores(model, {n: params[n] for n in names}), layout,
                         GroupTarget(per_family=counts), aggregate="l2")
    masked = copy.deepcopy(model)
    mask.apply_(masked)
    compacted, report = compact_transformer(masked, mask)
    compacted.eval()
    context = int(model.config.max_position_embeddings)
    tokens = min(128, context)
    out: dict[str, Any] = {"model": model_dir or "LLaMA-shaped tiny LM (train-tiny's default shape, random weights)",
                           "parameters": sum(p.numel() for p in model.parameters()),
                           "compacted_parameters": sum(p.numel() for p in compacted.parameters()),
                           "blocks_after": report.blocks, "kept": counts,
                           "macs_per_token_removed": 1 - transformer_macs(compacted, 1) / transformer_macs(masked, 1),
                           "rows": []}
    ids = torch.randint(0, int(model.config.vocab_size), (1, tokens), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert relative_difference(masked(input_ids=ids).logits, compacted(input_ids=ids).logits) <= 1e-5
        medians = alternate({"dense": lambda: masked(input_ids=ids, use_cache=False),
                             "compacted": lambda: compacted(input_ids=ids, use_cache=False)}, repeats)
    out["forward"] = {"tokens": tokens, **_ratios(medians, 1 - transformer_macs(compacted, tokens)
                                                  / transformer_macs(masked, tokens))}
    for batch in (1, 8):
        prompt = torch.randint(0, int(model.config.vocab_size), (batch, 16), generator=torch.Generator().manual_seed(2))
        new = min(new_tokens, context - 16)
        generated: dict[str, torch.Tensor] = {}

        def decode(side: str, lm: nn.Module) -> Callable[[], None]:
            def run() -> None:
                generated[side] = lm.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                              min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)
            return run

        with torch.inference_mode():
            medians = alternate({"dense": decode("dense", masked), "compacted": decode("compacted", compacted)},
                                max(5, repeats // 2))
        out["rows"].append({"batch": batch, "new_tokens": new,
                            "dense_tokens_per_s": batch * new / medians["dense"],
                            "compacted_tokens_per_s": batch * new / medians["compacted"],
                            "speedup": medians["dense"] / medians["compacted"],
                            "same_tokens": torch.equal(generated["dense"], generated["compacted"])})
    return out


# --- report ------------------------------------------------------------------------------------------
def _met(value: float, goal: float) -> str:
    return f"goal >= {goal:g}: {'met' if value >= goal else 'NOT met'}"


def report(vision: list[dict[str, Any]], lm: dict[str, Any] | None, args: argparse.Namespace) -> list[str]:
    lines = [f"machine: {_cpu()} ({os.cpu_count()} cores), torch {torch.__version__}, {torch.get_num_threads()} "
             f"threads, medians of {args.repeats} alternated rounds", ""]
    for result in vision:
        lines.append(f"{result['model']}: kept {result['kept_channels']} of {result['channels']} channels in "
                     f"{result['families']} families; MACs removed {100 * result['macs_removed']:.1f}% "
                     f"({result['dense_macs'] / 1e6:.1f}M -> {result['compacted_macs'] / 1e6:.1f}M per image)")
        lines.append(f"  {'runtime':<12} {'batch':>5} {'dense ms':>9} {'compacted ms':>13} {'speed-up':>9} "
                     f"{'saved/removed':>14}")
        for row in result["rows"]:
            line = (f"  {row['runtime']:<12} {row['batch']:>5} {row['dense_ms']:>9.2f} {row['compacted_ms']:>13.2f} "
                    f"{row['speedup']:>8.2f}x {row['saved_over_removed']:>14.2f}")
            if row["batch"] == 64:
                line += (f"   speed-up {_met(row['speedup'], GOALS['speedup'])}; saved/removed "
                         f"{_met(row['saved_over_removed'], GOALS['saved_over_removed'])}")
            lines.append(line)
        lines.append("")
    if lm is not None:
        lines.append(f"{lm['model']}: {lm['parameters']:,} -> {lm['compacted_parameters']:,} parameters; blocks after "
                     f"{lm['blocks_after'][0]}; MACs per token removed {100 * lm['macs_per_token_removed']:.1f}%")
        forward = lm["forward"]
        lines.append(f"  forward of {forward['tokens']} tokens: dense {forward['dense_ms']:.2f} ms, compacted "
                     f"{forward['compacted_ms']:.2f} ms ({forward['speedup']:.2f}x)")
        for row in lm["rows"]:
            line = (f"  decode batch {row['batch']}, {row['new_tokens']} tokens: dense "
                    f"{row['dense_tokens_per_s']:.0f} tokens/s, compacted {row['compacted_tokens_per_s']:.0f} "
                    f"tokens/s ({row['speedup']:.2f}x; same tokens: {'yes' if row['same_tokens'] else 'NO'})")
            if row["batch"] == 1:
                line += f"   {_met(row['speedup'], GOALS['decode'])}"
            lines.append(line)
    return lines


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--keep", type=float, default=0.3, help="Fraction of each family's channels kept (vision).")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--lm-remove", type=float, default=0.4, help="Fraction of heads and MLP channels removed.")
    parser.add_argument("--model", default=None, help="A Hugging Face LLaMA-style directory instead of the built one.")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--skip-lm", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if onnx_available() is not None:
        print(f"note: no onnxruntime columns: {onnx_available()}", file=sys.stderr)
    vision = [vision_rows(name, args.keep, args.batches, args.repeats, args.threads) for name in ("conv4", "resnet20")]
    lm = None if args.skip_lm else lm_rows(args.model, args.lm_remove, args.new_tokens, args.repeats)
    print("\n".join(report(vision, lm, args)))
    if args.json:
        Path(args.json).write_text(json.dumps({"vision": vision, "lm": lm, "threads": args.threads,
                                               "repeats": args.repeats}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
