#!/usr/bin/env bash
# Every GPU check of the open issues in one run, for a session lent a CUDA machine (the device
# tool): PYTHONPATH=src, logs under $OUT (or ./gpu-logs). Run it on the CPU first: each step that
# needs CUDA says so and moves on.
#   bash scripts/gpu_checks.sh
set -uo pipefail
OUT="${OUT:-gpu-logs}"
mkdir -p "$OUT"
export PYTHONPATH=src
python - <<'PY' > "$OUT/env.txt" 2>&1
import torch
print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")
PY
# 1. the CUDA tests of the suite (they skip themselves without CUDA)
timeout 300 python -m pytest -q -x -k "cuda or gpu" tests/ > "$OUT/pytest_cuda.txt" 2>&1
# 2. 2:4 execution against dense on LLaMA-7B layer shapes, and what sparsify chooses per bucket
timeout 240 python benchmarks/gpu_semi_structured.py --repeats 15 > "$OUT/semi_structured.txt" 2>&1
# 3. a deployed ticket on the GPU (dense chosen where sparse does not pay)
timeout 240 python - > "$OUT/deploy_cuda.txt" 2>&1 <<'PY'
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
    print("max diff", float((model(x) - reference(x)).abs().max()))
else:
    print("no CUDA")
PY
# 4. (issue 10) selection on the device against bare topk / kthvalue
timeout 120 python benchmarks/selection_speed.py --device cuda --repeats 10 > "$OUT/selection_speed.txt" 2>&1
# 5. (issue 10) one-shot pruning at LLaMA-7B shapes, bf16, 128 x 2048 calibration: 2 blocks timed,
#    extrapolated to 32; per layer against kthvalue (Wanda) and the reference algorithm (SparseGPT)
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  timeout 330 python benchmarks/llm_prune_speed.py --llama7b --device cuda --blocks 2 --nsamples 128 \
      --seqlen 2048 --dtype bfloat16 > "$OUT/llm_prune_speed.txt" 2>&1
else
  echo "no CUDA: skipped (on CPU run: python benchmarks/llm_prune_speed.py)" > "$OUT/llm_prune_speed.txt"
fi
# 6. (issue 10) torchrun with nccl: needs one GPU per rank
if python -c "import torch, sys; sys.exit(0 if torch.cuda.device_count() >= 2 else 1)"; then
  timeout 120 python -m pytest -q -x tests/test_llm_distributed.py > "$OUT/torchrun_nccl.txt" 2>&1
else
  echo "fewer than 2 GPUs: the nccl run needs one GPU per rank; skipped" > "$OUT/torchrun_nccl.txt"
fi
# 7. (issue 11) stacked training of LeNet-300-100 on digits: 8 and 32 networks vs one at a time
#    (goals on an H100/H200: >= 6x with 8, >= 20x with 32)
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  for n in 8 32; do
    timeout 150 python benchmarks/stacked_training.py --device cuda --networks $n --repeats 3 \
        > "$OUT/stacked_training_$n.txt" 2>&1
  done
else
  echo "no CUDA: skipped (on CPU run: python benchmarks/stacked_training.py)" > "$OUT/stacked_training_8.txt"
fi
tail -n 5 "$OUT"/*.txt
