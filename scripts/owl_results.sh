#!/usr/bin/env bash
# docs/RESULTS.md §3b: uniform vs OWL layer-wise sparsity with Wanda at 50/60/70% on the tiny LM
# (held-out perplexity) and MiniLM (embedding fidelity). Needs runs/llm/tiny-shakespeare (see §3).
set -euo pipefail
TEXT=${TEXT:-../shared/data/tinyshakespeare.txt}
TINY=${TINY:-runs/llm/tiny-shakespeare}
OUT=${OUT:-runs/owl}
mkdir -p "$OUT"
for s in 0.5 0.6 0.7; do
  for mode in uniform owl; do
    [ -f "$OUT/tiny-$s-$mode/pruning_report.json" ] || ticketlab llm prune --model "$TINY" --method wanda \
        --sparsity $s --layer-sparsity $mode --calib "$TEXT" --eval-text "$TEXT" --nsamples 128 --seqlen 128 \
        --quiet --out "$OUT/tiny-$s-$mode" > /dev/null
    [ -f "$OUT/minilm-$s-$mode/pruning_report.json" ] || ticketlab llm prune --method wanda --sparsity $s \
        --layer-sparsity $mode --eval-text src/ticketlab/llm/data/calibration_en.txt --seqlen 128 \
        --quiet --out "$OUT/minilm-$s-$mode" > /dev/null
  done
done
python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| sparsity | tiny LM ppl uniform | tiny LM ppl OWL | MiniLM cos uniform | MiniLM cos OWL |")
print("|---|---:|---:|---:|---:|")
for s in ("0.5", "0.6", "0.7"):
    r = {k: json.loads((out / f"{k}/pruning_report.json").read_text())
         for k in (f"tiny-{s}-uniform", f"tiny-{s}-owl", f"minilm-{s}-uniform", f"minilm-{s}-owl")}
    ppl = lambda k: r[k]["evaluation"]["after"]["perplexity"]
    cos = lambda k: r[k]["evaluation"]["after"]["mean_cosine"]
    dense = r[f"tiny-{s}-uniform"]["evaluation"]["before"]["perplexity"]
    print(f"| {float(s):.0%} | {ppl(f'tiny-{s}-uniform'):.2f} | {ppl(f'tiny-{s}-owl'):.2f} | "
          f"{cos(f'minilm-{s}-uniform'):.4f} | {cos(f'minilm-{s}-owl'):.4f} |  (dense ppl {dense:.2f})")
PY
