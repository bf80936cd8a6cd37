"""One-shot pruning speed on a LLaMA-shaped model with random weights: end to end and per layer.

    python benchmarks/llm_prune_speed.py                      # CPU-sized: 512 hidden, 4 blocks, 16 x 256 tokens
    python benchmarks/llm_prune_speed.py --llama7b --device cuda --blocks 4 --nsamples 128 --seqlen 2048 \\
                                         --dtype bfloat16     # the issue's GPU setting (4 of 32 blocks)

For each method (Wanda 50%, SparseGPT 50%, SparseGPT 2:4) it prunes a fresh copy of the model with
`ticketlab.llm.prune_model` and prints the end-to-end seconds, their extrapolation to ``--total-blocks``
(32 for LLaMA-7B: the measured time minus the capture, per block, times the total), and the mean
pruning arithmetic per layer shape. Beside them, on the same shapes and device, side by side:
Wanda's arithmetic against a bare ``torch.kthvalue`` over the same score matrix (the issue's bound:
within 3x), and SparseGPT's against the plain reference algorithm of
``benchmarks/llm_layer_pruning.py`` (goal: at most 0.5x). The reference is timed on one layer per
shape with a Hessian from random activations.
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


def end_to_end(model: torch.nn.Module, calibration: torch.Tensor, config, device: torch.device, batch: int | None):
    from ticketlab.llm import prune_model

    sync(device)
    started = time.perf_counter()
    report = prune_model(model, calibration, config, device=device, batch_size=batch)
    sync(device)
    return time.perf_counter() - started, report


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
    args = parser.parse_args()
    if args.llama7b:
        args.hidden, args.intermediate, args.heads, args.vocab = 4096, 11008, 32, 32000
    torch.set_num_threads(args.threads)
    from ticketlab.llm import OneShotConfig
    from ticketlab.select import NMPattern

    device = torch.device(args.device)
    model = build(args)
    calibration = torch.randint(0, args.vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(1))
    print(f"LLaMA-shaped model: {args.blocks} blocks of hidden {args.hidden} / MLP {args.intermediate}, {args.dtype}, "
          f"{args.nsamples} x {args.seqlen} calibration tokens, device {device}, torch {torch.__version__}")
    shapes = {"attention": (args.hidden, args.hidden), "mlp in": (args.intermediate, args.hidden),
              "mlp out": (args.hidden, args.intermediate)}
    for label, config in (("Wanda 50%", OneShotConfig("wanda", sparsity=0.5)),
                          ("SparseGPT 50%", OneShotConfig("sparsegpt", sparsity=0.5)),
                          ("SparseGPT 2:4", OneShotConfig("sparsegpt", pattern="2:4"))):
        seconds, report = end_to_end(copy.deepcopy(model), calibration, config, device, args.batch)
        per_block = seconds / args.blocks
        print(f"\n{label}: {seconds:.2f} s for {args.blocks} blocks -> ~{per_block * args.total_blocks:.1f} s for "
              f"{args.total_blocks} blocks (calibration batch {report.extra['calibration_batch_size']})")
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
