#!/usr/bin/env bash
# Reproduces docs/RESULTS.md section 3: a tiny LLaMA-style LM trained on Tiny Shakespeare and the
# pretrained all-MiniLM-L6-v2, each pruned by magnitude / Wanda / SparseGPT at 50%, 2:4 and 4:8.
# Run from the repository root with ../shared/data/tinyshakespeare.txt beside it. Finished runs are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/llm
TEXT=../shared/data/tinyshakespeare.txt
[ -f runs/llm/tiny-shakespeare/config.json ] || ticketlab llm train-tiny --text $TEXT --out runs/llm/tiny-shakespeare --quiet
ticketlab llm eval --model runs/llm/tiny-shakespeare --text $TEXT --json > runs/llm/tiny-dense.json
for m in magnitude wanda sparsegpt; do
  for p in "--sparsity 0.5" "--pattern 2:4" "--pattern 4:8"; do
    tag=$(echo "$p" | sed 's/--sparsity /s/; s/--pattern //; s/:/of/')
    [ -f runs/llm/tiny-$m-$tag/pruning_report.json ] || ticketlab llm prune --model runs/llm/tiny-shakespeare --method $m $p \
      --calib $TEXT --nsamples 128 --seqlen 128 --eval-text $TEXT --out runs/llm/tiny-$m-$tag --quiet
  done
done
CAL=src/ticketlab/llm/data/calibration_en.txt
for m in magnitude wanda sparsegpt; do
  for p in "--sparsity 0.5" "--pattern 2:4" "--pattern 4:8"; do
    tag=$(echo "$p" | sed 's/--sparsity /s/; s/--pattern //; s/:/of/')
    [ -f runs/llm/minilm-$m-$tag/pruning_report.json ] || ticketlab llm prune --method $m $p --nsamples 128 --seqlen 128 \
      --eval-text $CAL --out runs/llm/minilm-$m-$tag --quiet
  done
done
echo "done: runs/llm"
