#!/usr/bin/env bash
# Every GPU check of the open issues in one run, for a session lent a CUDA machine (the device
# tool): PYTHONPATH=src, logs under $OUT (or ./gpu-logs), at most 5 files (the device tool returns
# 8), steps in priority order with their own time limits (about 9 minutes at most in all). Run it
# on the CPU first: each step that needs CUDA says so and moves on.
#   bash scripts/gpu_checks.sh [SECTION...]   (stacked llm tests deploy variants nccl; default: all)
set -uo pipefail
SECTIONS=" ${*:-stacked llm tests deploy variants nccl} "
wants() { [[ "$SECTIONS" == *" $1 "* ]]; }
OUT="${OUT:-gpu-logs}"
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
has_cuda() { python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; }
step() {  # step LOG TITLE LIMIT_S COMMAND...: appends the output and the time the step took
  local log="$OUT/$1" title="$2" limit="$3"; shift 3
  local start=$SECONDS
  echo "### $title" >> "$log"
  timeout "$limit" "$@" >> "$log" 2>&1; local rc=$?
  echo "### $title: rc=$rc, $((SECONDS - start)) s" | tee -a "$log"
}
python -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" \
    | tee "$OUT/tests.txt"
# 1. (issue 11) stacked training of LeNet-300-100 on digits: 8 and 32 networks vs one at a time
#    (goals on an H100/H200: >= 6x with 8, >= 20x with 32); the stacked trainer's CUDA tests first
#    (CUDA graph capture, resume, checkpoints), then the benchmark (stacked with and without
#    CUDA graphs), then a longer run (1000 iterations) for the steady state
if wants stacked; then
step tests.txt "stacked training CUDA tests" 90 python -m pytest -q -rs -k cuda tests/test_stacked_training.py
fi
if wants stacked && has_cuda; then
  step stacked.txt "stacked training, 8 networks" 90 \
      python benchmarks/stacked_training.py --device cuda --networks 8 --repeats 5
  step stacked.txt "stacked training, 32 networks" 120 \
      python benchmarks/stacked_training.py --device cuda --networks 32 --repeats 3
  step stacked.txt "stacked training, 8 networks, 1000 iterations" 120 \
      python benchmarks/stacked_training.py --device cuda --networks 8 --repeats 3 --steps 1000it
  step stacked.txt "stacked training, 8 conv2, crop-and-flip" 90 \
      python benchmarks/stacked_training.py --device cuda --networks 8 --repeats 3 --model conv2 --augment crop-flip
else
  echo "skipped: no CUDA or not asked for (on CPU run: python benchmarks/stacked_training.py)" > "$OUT/stacked.txt"
fi
# 2. (issue 10) one-shot pruning at LLaMA-7B shapes, bf16, 128 x 2048 calibration: 2 blocks timed,
#    extrapolated to 32; per layer against kthvalue (Wanda) and the reference algorithm (SparseGPT)
if wants llm && has_cuda; then
  step llm.txt "llm prune speed, LLaMA-7B shapes" 200 python benchmarks/llm_prune_speed.py --llama7b \
      --device cuda --blocks 2 --nsamples 128 --seqlen 2048 --dtype bfloat16
else
  echo "skipped: no CUDA or not asked for (on CPU run: python benchmarks/llm_prune_speed.py)" > "$OUT/llm.txt"
fi
# 3. (issue 10) selection on the device against bare topk / kthvalue
wants llm && step llm.txt "selection speed" 45 python benchmarks/selection_speed.py --device cuda --repeats 10
# 4. the CUDA tests of the suite (they skip themselves without CUDA), the stacked trainer's included
wants tests && step tests.txt "CUDA tests" 90 python -m pytest -q -k "cuda or gpu" tests/
# 5. (issue 9) 2:4 execution against dense on LLaMA-7B layer shapes, and what sparsify chooses
if wants deploy; then
step deploy.txt "2:4 vs dense" 60 python benchmarks/gpu_semi_structured.py --repeats 15 --tokens 16,1024,4096,16384,32768
wants variants && step deploy.txt "2:4 variants" 60 python benchmarks/gpu_24_variants.py
step deploy.txt "deployed ticket on the GPU" 30 python - <<'PY'
import torch
from ticketlab.deploy.execute import sparsify, execution_plan
from ticketlab.models import create_model
if torch.cuda.is_available():
    model = create_model("lenet300", (1, 28, 28), 10, seed=0).cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(torch.rand_like(p) < 0.03)
    reference = create_model("lenet300", (1, 28, 28), 10, seed=0).cuda().eval()
    reference.load_state_dict(model.state_dict())
    sparsify(model, batch_sizes=(1, 64))
    x = torch.randn(64, 1, 28, 28, device="cuda")
    print(execution_plan(model))
    with torch.no_grad():
        print("max diff", float((model(x) - reference(x)).abs().max()))
else:
    print("no CUDA")
PY
fi
# 6. (issue 10) torchrun with nccl: needs one GPU per rank
if wants nccl && python -c "import torch, sys; sys.exit(0 if torch.cuda.device_count() >= 2 else 1)"; then
  step tests.txt "torchrun nccl" 120 python -m pytest -q -x tests/test_llm_distributed.py
else
  echo "fewer than 2 GPUs: the nccl run needs one GPU per rank; skipped" >> "$OUT/tests.txt"
fi
tail -n 8 "$OUT"/*.txt
