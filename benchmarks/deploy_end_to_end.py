"""A lottery ticket from a real IMP run, deployed: file size, identical predictions, speed-up.

    python benchmarks/deploy_end_to_end.py [--run runs/deploy-lenet] [--max-density 0.03]
                                           [--batches 1,64] [--threads 2] [--repeats 50]
                                           [--llm] [--tiny runs/llm/tiny-shakespeare]

1. Runs (or resumes) ``ticketlab imp`` with the LTH recipe for LeNet-300-100 on mnist5k until a
   round keeps at most ``--max-density`` of the weights (round 16 of 17 at 20% per round: 2.9%).
2. Exports that round (compaction + compact encoding) and checks that the deployed model predicts
   exactly what the masked network predicts on every test image.
3. Times the dense network (plain PyTorch, full width, zeros included) against the deployed one,
   alternating, ``--repeats`` rounds per batch size, and prints the ratios (medians).

With ``--llm`` it also prunes MiniLM (50% Wanda and 2:4 SparseGPT) and, with ``--tiny``, the tiny
LM of ``ticketlab llm train-tiny``, exports them and prints their size and speed ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def ticketlab(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "ticketlab", *argv], check=True)


def lenet_ticket(run: Path, max_density: float) -> int:
    """Run / resume IMP until a round is at most ``max_density``; return that round."""
    ticketlab("imp", "--model", "lenet300", "--data", "mnist5k", "--rounds", "17", "--controls", "none",
              "--quiet", "--out", str(run))
    summary = json.loads((run / "summary.json").read_text())
    return next(r["round"] for r in summary["rounds"] if r["density"] <= max_density)


def identical_predictions(run: Path, round_index: int, exported: Path) -> tuple[int, int]:
    """(mismatches, test images): the deployed model against the masked network of that round."""
    from ticketlab.data import load_dataset
    from ticketlab.deploy import load
    from ticketlab.deploy.sources import resolve_source
    from ticketlab.deploy.export import build_vision_model

    source = resolve_source(run, round_index=round_index)
    masked = build_vision_model(source.spec)
    masked.load_state_dict(source.state)
    deployed = load(exported)
    data = load_dataset("mnist5k")
    with torch.no_grad():
        expected = masked(data.test_x).argmax(1)
        got = torch.cat([deployed(data.test_x[i:i + 64]).argmax(1) for i in range(0, len(data.test_x), 64)])
    return int((expected != got).sum()), len(expected)


def report(name: str, directory: Path, batches: list[int], threads: int, repeats: int, seqlen: int = 64) -> None:
    from ticketlab.deploy.bench import bench

    result = bench(directory, batch_sizes=batches, threads=threads, repeats=repeats, seqlen=seqlen, memory=False)
    files = result["file_bytes"]
    print(f"{name}: weights {files['compact']:,} bytes vs {files['dense']:,} dense "
          f"(size ratio {files['compact'] / files['dense']:.3f}); max |diff| {result['max_abs_diff']:.1e}")
    for row in result["end_to_end"]:
        print(f"  batch {row['batch']:>4}: dense {row['dense_ms']:.3f} ms, deployed {row['deployed_ms']:.3f} ms, "
              f"speed-up ratio {row['speedup']:.2f}x")


def llm_models(root: Path, tiny: Path | None, batches: list[int], threads: int, repeats: int) -> None:
    jobs = [("MiniLM wanda 50%", [], ["--method", "wanda", "--sparsity", "0.5"]),
            ("MiniLM sparsegpt 2:4", [], ["--method", "sparsegpt", "--pattern", "2:4"])]
    if tiny is not None:
        text = "../shared/data/tinyshakespeare.txt"
        jobs += [("tiny LM wanda 50%", ["--model", str(tiny), "--calib", text], ["--method", "wanda", "--sparsity", "0.5"]),
                 ("tiny LM sparsegpt 2:4", ["--model", str(tiny), "--calib", text],
                  ["--method", "sparsegpt", "--pattern", "2:4"])]
    for index, (name, model, method) in enumerate(jobs):
        pruned, exported = root / f"pruned-{index}", root / f"export-{index}"
        ticketlab("llm", "prune", *model, *method, "--nsamples", "32", "--seqlen", "64", "--quiet", "--out", str(pruned))
        ticketlab("export", str(pruned), "--out", str(exported))
        report(name, exported, batches, threads, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/deploy-lenet")
    parser.add_argument("--max-density", type=float, default=0.03)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--llm", action="store_true")
    parser.add_argument("--tiny", default=None, help="A tiny LM directory from ticketlab llm train-tiny.")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    run = Path(args.run)
    round_index = lenet_ticket(run, args.max_density)
    with tempfile.TemporaryDirectory() as tmp:
        exported = Path(tmp) / "ticket"
        ticketlab("export", str(run), "--round", str(round_index), "--out", str(exported))
        mismatches, total = identical_predictions(run, round_index, exported)
        print(f"LeNet-300-100 ticket, round {round_index} of {run}: {mismatches} of {total} test predictions differ "
              "from the masked network")
        report("LeNet-300-100 ticket", exported, batches, args.threads, args.repeats)
        if args.llm:
            llm_models(Path(tmp), Path(args.tiny) if args.tiny else None, [1, 8], args.threads, max(5, args.repeats // 10))


if __name__ == "__main__":
    main()
