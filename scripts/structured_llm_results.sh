#!/usr/bin/env bash
# Reproduces docs/RESULTS.md section 6: heads and MLP channels removed from the tiny LLaMA-style LM
# (trained on Tiny Shakespeare) and from the pretrained all-MiniLM-L6-v2 — held-out perplexity /
# embedding fidelity and speed at 10, 25 and 40% of both removed (Wanda group scores, least-squares
# refit of o_proj / down_proj), against unstructured Wanda 50%. Run from the repository root with
# ../shared/data/tinyshakespeare.txt beside it. Finished runs are kept; `bench` is the slow part.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/structured-llm
OUT=runs/structured-llm
TEXT=../shared/data/tinyshakespeare.txt
CAL=src/ticketlab/llm/data/calibration_en.txt
[ -f runs/llm/tiny-shakespeare/config.json ] || ticketlab llm train-tiny --text $TEXT --out runs/llm/tiny-shakespeare --quiet
prune() {   # NAME MODEL-ARGS... -- PRUNE-ARGS...
  local name=$1; shift
  [ -f $OUT/$name/pruning_report.json ] || ticketlab llm prune "$@" --method wanda --nsamples 128 --seqlen 128 \
    --out $OUT/$name --quiet
}
for s in 0.1 0.25 0.4; do
  prune tiny-heads-channels-$s --model runs/llm/tiny-shakespeare --calib $TEXT --eval-text $TEXT \
    --sparsity $s --granularity channel+head
  prune minilm-heads-channels-$s --eval-text $CAL --sparsity $s --granularity channel+head
done
prune tiny-heads-channels-0.25-norefit --model runs/llm/tiny-shakespeare --calib $TEXT --eval-text $TEXT \
  --sparsity 0.25 --granularity channel+head --reconstruct none
prune minilm-heads-channels-0.25-norefit --eval-text $CAL --sparsity 0.25 --granularity channel+head --reconstruct none
prune tiny-unstructured-0.5 --model runs/llm/tiny-shakespeare --calib $TEXT --eval-text $TEXT --sparsity 0.5
prune minilm-unstructured-0.5 --eval-text $CAL --sparsity 0.5
for run in $OUT/*/; do
  name=$(basename $run)
  [ -f $OUT/export-$name/ticketlab.json ] || [[ $name == export-* ]] || ticketlab export $run --out $OUT/export-$name
done
for dir in $OUT/export-*/; do
  [ -f $dir/bench.json ] || ticketlab bench $dir --batch-sizes 1,8 --repeats 10 --no-memory --threads 1 > /dev/null
done
echo "done: $OUT"
