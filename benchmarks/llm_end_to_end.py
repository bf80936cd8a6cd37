"""End-to-end one-shot pruning time and peak memory: the tiny causal LM and all-MiniLM-L6-v2.

For each model and each of magnitude / Wanda / SparseGPT at 50% unstructured and 2:4, a fresh
process loads the model (not timed), cuts the calibration windows, and runs `prune_model`; we
report its wall time (capture + forward passes + pruning), the pruning arithmetic alone (sum of
the per-layer seconds), the process's peak RSS during the run next to its RSS before pruning,
and the quality after pruning: held-out perplexity for the tiny LM, sentence-embedding fidelity to
the dense model for MiniLM (the same measures as ``ticketlab llm eval``). One process per run, so
each peak belongs to that run alone.

    python benchmarks/llm_end_to_end.py [--tiny DIR] [--text FILE] [--nsamples 32] [--no-minilm]

Without --tiny, a tiny LM is first trained on --text (default: ../shared/data/tinyshakespeare.txt)
with a short budget (--tiny-steps, default 300) into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = [("magnitude", "0.5"), ("wanda", "0.5"), ("sparsegpt", "0.5"),
        ("magnitude", "2:4"), ("wanda", "2:4"), ("sparsegpt", "2:4")]
DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def one_run(spec: dict) -> dict:
    """Load, calibrate, prune and evaluate once (in this process); return the measurements."""
    import torch

    from ticketlab.llm import OneShotConfig, prune_model
    from ticketlab.llm.fidelity import embedding_fidelity, heldout_sentences, sentence_embeddings
    from ticketlab.llm.io import load_pretrained
    from ticketlab.llm.perplexity import text_perplexity
    from ticketlab.llm.text import build_calibration, packaged_text, read_text, resolve_seqlen

    torch.set_num_threads(spec["threads"])
    loaded = load_pretrained(spec["model"])
    text = read_text(spec["text"]) if spec["text"] else packaged_text()
    seqlen = resolve_seqlen(loaded.model, spec["seqlen"])
    calib = build_calibration(loaded.tokenizer, text, nsamples=spec["nsamples"], seqlen=seqlen, seed=0,
                              wrap_special=loaded.kind == "encoder")
    sentences = reference = None
    if loaded.kind == "encoder":
        sentences = heldout_sentences(text)
        reference = sentence_embeddings(loaded.model, loaded.tokenizer, sentences)
    rss_before = _rss_bytes()
    result: dict = {"rss_before": rss_before, "nsamples": calib.nsamples, "seqlen": calib.seqlen}
    if spec["method"] != "dense":
        target = spec["target"]
        config = OneShotConfig(method=spec["method"], **({"pattern": target} if ":" in target else {"sparsity": float(target)}))
        started = time.perf_counter()
        report = prune_model(loaded.model, calib.input_ids, config)
        result.update(wall=time.perf_counter() - started, arithmetic=sum(l["seconds"] for l in report.layers),
                      peak=report.peak_memory_bytes, layers=len(report.layers),
                      recon=report.mean_reconstruction_error)
    if loaded.kind == "causal":
        ppl = text_perplexity(loaded.model, loaded.tokenizer, text, seqlen=seqlen, max_windows=spec["eval_windows"])
        result["quality"] = f"ppl {ppl.perplexity:.2f}"
    else:
        fid = embedding_fidelity(loaded.model, reference, loaded.tokenizer, sentences)
        result["quality"] = f"cos {fid.mean_cosine:.4f}"
    return result


def _spawn(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run {spec['method']} {spec['target']} on {spec['model']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", default=None, help="Tiny causal LM directory (default: train one now).")
    parser.add_argument("--text", default=str(DEFAULT_TEXT), help="Text for training, calibration and perplexity.")
    parser.add_argument("--tiny-steps", type=int, default=300)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=None, help="Default: min(2048, context); 128 for MiniLM.")
    parser.add_argument("--eval-windows", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(json.loads(args.one))))
        return

    tiny = args.tiny
    scratch = tempfile.TemporaryDirectory(prefix="ticketlab-bench-")
    if tiny is None:
        from ticketlab.llm.text import read_text
        from ticketlab.llm.tiny import TinyLMConfig, train_tiny_lm

        tiny = str(Path(scratch.name) / "tiny")
        print(f"training a tiny LM ({args.tiny_steps} steps) on {args.text} ...", file=sys.stderr)
        trained = train_tiny_lm(read_text(args.text), tiny, TinyLMConfig(steps=args.tiny_steps))
        print(f"  {trained.seconds:.0f} s, held-out ppl {trained.validation.perplexity:.2f}", file=sys.stderr)
    models = [("tiny LM", tiny, args.text, args.seqlen)]
    if not args.no_minilm:
        from ticketlab.llm.io import default_model_path

        models.append(("MiniLM-L6", str(default_model_path()), None, args.seqlen or 128))
    rows = []
    for label, path, text, seqlen in models:
        for method, target in [("dense", "-"), *RUNS]:
            spec = {"model": path, "text": text, "seqlen": seqlen, "nsamples": args.nsamples, "method": method,
                    "target": target, "eval_windows": args.eval_windows, "threads": args.threads}
            r = _spawn(spec)
            rows.append((label, method, target, r))
            print(f"  {label} {method} {target}: {r.get('wall', 0):.2f} s, {r['quality']}", file=sys.stderr)
    mib = 1024 ** 2
    header = f"{'model':<10} {'method':<10} {'target':<6} {'calib':>8} {'wall s':>7} {'prune s':>8} " \
             f"{'RSS before':>11} {'peak RSS':>9} {'recon err':>9}  quality"
    print(header)
    print("-" * len(header))
    for label, method, target, r in rows:
        calib = f"{r['nsamples']}x{r['seqlen']}"
        if method == "dense":
            print(f"{label:<10} {method:<10} {target:<6} {calib:>8} {'':>7} {'':>8} {r['rss_before'] / mib:>9.0f}Mi "
                  f"{'':>9} {'':>9}  {r['quality']}")
        else:
            print(f"{label:<10} {method:<10} {target:<6} {calib:>8} {r['wall']:>7.2f} {r['arithmetic']:>8.2f} "
                  f"{r['rss_before'] / mib:>9.0f}Mi {r['peak'] / mib:>7.0f}Mi {r['recon']:>9.4f}  {r['quality']}")
    scratch.cleanup()


if __name__ == "__main__":
    main()
