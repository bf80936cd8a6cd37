"""One-shot pruning speed on a LLaMA-shaped model with random weights: end to end and per layer.

    python benchmarks/llm_prune_speed.py                      # CPU-sized: 512 hidden, 4 blocks, 16 x 256 tokens
    python benchmarks/llm_prune_speed.py --llama7b --device cuda --blocks 4 --nsamples 128 --seqlen 2048 \\
                                         --dtype bfloat16     # the issue's GPU setting (4 of 32 blocks)

For each method (Wanda 50%, SparseGPT 50%, SparseGPT 2:4) it prunes a fresh copy of the model with
`ticketlab.llm.prune_model` and prints the end-to-end seconds and their extrapolation to
``--total-blocks`` (32 for LLaMA-7B). Each block's time is taken as it finishes (after a device
sync), so the estimate is ``measured total + (total_blocks - blocks) x median middle block`` (the
first block carries the capture, the last skips the forward that feeds a next one): with
``--blocks`` >= 3 nothing is assumed. An untimed warm-up prune runs first so no method pays the
device's start-up. Beside them, on the same shapes and device, side by side: Wanda's arithmetic per
layer against a bare ``torch.kthvalue`` over the same score matrix (the issue's bound: within 3x), and
SparseGPT's against the plain reference algorithm of ``benchmarks/llm_layer_pruning.py`` (goal: at most
0.5x). The reference is timed on one layer per shape with a Hessian from random activations.
``--profile`` prints where one Wanda prune spends its time (torch.profiler, top operators).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def build(args: argparse.Namespace) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                                      num_hidden_layers=args.blocks, num_attention_heads=args.heads,
                                      num_key_value_heads=args.heads, max_position_embeddings=max(2048, args.seqlen))
    model = transformers.LlamaForCausalLM(config).to(getattr(torch, args.dtype))
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BlockClock:
    """A `prune_model` progress handle that records when each block finishes (after a sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: list[float] = []

    def __call__(self, description: str, total: int) -> "BlockClock":
        sync(self.device)
        self.marks = [time.perf_counter()]
        return self

    def update(self, count: int) -> None:
        sync(self.device)
        self.marks.append(time.perf_counter())

    def close(self) -> None:
        pass

    def block_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def end_to_end(model: torch.nn.Module, calibration: torch.Tensor, config, device: torch.device, batch: int | None):
    """(total seconds, seconds of each block, report) of one `prune_model` call."""
    from ticketlab.llm import prune_model

    clock = BlockClock(device)
    sync(device)
    started = time.perf_counter()
    report = prune_model(model, calibration, config, device=device, batch_size=batch, progress=clock)
    sync(device)
    return time.perf_counter() - started, clock.block_seconds(), report


def extrapolate(total: float, blocks: list[float], total_blocks: int) -> float:
    """Seconds for ``total_blocks``: the measured call plus the missing blocks at the median time of
    a middle block (the first carries the capture, the last has no forward for a next block)."""
    middle = blocks[1:-1] or blocks
    return total + (total_blocks - len(blocks)) * statistics.median(middle)


def profile_wanda(model: torch.nn.Module, calibration: torch.Tensor, device: torch.device, batch: int | None) -> None:
    """Print the operators one Wanda prune spends its time in (device time first where there is one)."""
    from torch.profiler import ProfilerActivity, profile

    from ticketlab.llm import OneShotConfig

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        end_to_end(copy.deepcopy(model), calibration, OneShotConfig("wanda", sparsity=0.5), device, batch)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of one Wanda prune, by {key}:")
    print(prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60))
    print("by cpu_time_total:")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=60))


def bare_kthvalue(rows: int, cols: int, device: torch.device, repeats: int = 5) -> float:
    scores = torch.rand(rows, cols, device=device)
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        torch.kthvalue(scores, cols // 2, dim=1)
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def reference_time(rows: int, cols: int, device: torch.device, pattern) -> float:
    from llm_layer_pruning import reference_sparsegpt

    generator = torch.Generator().manual_seed(0)
    W = torch.randn(rows, cols, generator=generator).to(device)
    X = torch.randn(4 * cols, cols, generator=generator).to(device)
    H = (X.t() @ X) / X.shape[0]
    sync(device)
    started = time.perf_counter()
    reference_sparsegpt(W, H, None if pattern else 0.5, pattern, 128, 0.01)
    sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama7b", action="store_true", help="LLaMA-7B shapes: 4096 hidden, 11008 MLP, 32 heads.")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--total-blocks", type=int, default=32)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch", type=int, default=None, help="Calibration samples per block call.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--on-device", action="store_true",
                        help="Place the model on --device first (as when it fits there); default: it stays in host memory "
                             "and each block visits the device.")
    parser.add_argument("--profile", action="store_true", help="Also profile one Wanda prune (torch.profiler).")
    args = parser.parse_args()
    if args.llama7b:
        args.hidden, args.intermediate, args.heads, args.vocab = 4096, 11008, 32, 32000
    torch.set_num_threads(args.threads)
    from ticketlab.llm import OneShotConfig
    from ticketlab.select import NMPattern

    device = torch.device(args.device)
    model = build(args)
    if args.on_device:
        model.to(device)
    calibration = torch.randint(0, args.vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(1))
    print(f"LLaMA-shaped model: {args.blocks} blocks of hidden {args.hidden} / MLP {args.intermediate}, {args.dtype}, "
          f"{args.nsamples} x {args.seqlen} calibration tokens, device {device}, torch {torch.__version__}, "
          f"model held {'on the device' if args.on_device else 'in host memory'}")
    shapes = {"attention": (args.hidden, args.hidden), "mlp in": (args.intermediate, args.hidden),
              "mlp out": (args.hidden, args.intermediate)}
    from ticketlab.llm import prune_model
    prune_model(copy.deepcopy(model), calibration[:2], OneShotConfig("wanda", sparsity=0.5), device=device)  # warm-up
    if args.profile:
        profile_wanda(model, calibration, device, args.batch)
    for label, config in (("Wanda 50%", OneShotConfig("wanda", sparsity=0.5)),
                          ("SparseGPT 50%", OneShotConfig("sparsegpt", sparsity=0.5)),
                          ("SparseGPT 2:4", OneShotConfig("sparsegpt", pattern="2:4"))):
        seconds, blocks, report = end_to_end(copy.deepcopy(model), calibration, config, device, args.batch)
        print(f"\n{label}: {seconds:.2f} s for {args.blocks} blocks (each: {', '.join(f'{b:.2f}' for b in blocks)} s) "
              f"-> ~{extrapolate(seconds, blocks, args.total_blocks):.1f} s for {args.total_blocks} blocks "
              f"(calibration batch {report.extra['calibration_batch_size']})")
        for name, (rows, cols) in shapes.items():
            layers = [l["seconds"] for l in report.layers if tuple(l["shape"]) == (rows, cols)]
            if not layers:
                continue
            ours = statistics.median(layers)
            if config.method == "wanda":
                bare = bare_kthvalue(rows, cols, device)
                print(f"  {name} {rows}x{cols}: {1e3 * ours:8.2f} ms per layer; bare kthvalue {1e3 * bare:7.2f} ms "
                      f"-> ratio {ours / bare:5.2f}x")
            else:
                pattern = NMPattern.parse(config.pattern) if config.pattern else None
                reference = reference_time(rows, cols, device, pattern)
                print(f"  {name} {rows}x{cols}: {1e3 * ours:8.2f} ms per layer; reference algorithm "
                      f"{1e3 * reference:8.2f} ms -> ratio {ours / reference:5.2f}x")


if __name__ == "__main__":
    main()
