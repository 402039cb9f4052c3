#!/usr/bin/env bash
# GPU check: everything that cannot run on a CPU-only CI machine, in one log. Needs one CUDA GPU; under 5
# minutes on one H100 (estimated from each step's time measured on one; not yet run end to end in this form).
#   bash scripts/gpu_check.sh [LOG]        (default log: gpu_check.log; the efficiency JSON lands beside it)
# Runs: the gpu-marked tests (bf16/fp16 autocast of the four model variants, fused attention kernels, AMP
# training, FSDP), the efficiency table (baseline / TempMe / STOP / unified x ViT-B/32 / ViT-B/16, 12 frames,
# batch 32, bf16, with model FLOP utilisation), the evaluation benchmark on the GPU, and a short amp_bf16
# training run of the unified model on the demo data.
# On a bare machine that has PyTorch but not this project's other dependencies, wheels placed in .whl/ are
# installed into /tmp/site first (pip download them elsewhere; see README "GPU check").
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-gpu_check.log}
PY=${PYTHON:-python3}
status=0
run() {  # run [-t SECONDS] CMD...: one step, its output in the log; a failure or timeout marks the check failed
  local limit=600
  if [ "$1" = -t ]; then limit=$2; shift 2; fi
  echo "=== $* ===" | tee -a "$log"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $((SECONDS - start)) s ===" | tee -a "$log"
  [ "$rc" -eq 0 ] || { echo "=== FAILED (exit $rc; 124 = timed out): $* ===" | tee -a "$log"; status=1; }
}
: > "$log"
if [ -d .whl ] && ! "$PY" -c 'import composer, streaming, av' 2>/dev/null; then
  run "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
run nvidia-smi
run "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
run -t 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts= tests/test_gpu_kernels.py
run -t 200 "$PY" -m tempme_composer.bench_efficiency --device cuda --bf16 --batch 32 --iters 2 --warmup 1 \
  --json "$(dirname "$log")/efficiency_gpu.json"
run -t 100 "$PY" recipes/train.py yamls/demo_unified.yaml precision=amp_bf16 output_dir=outputs/gpu_check_demo
run -t 60 "$PY" -m tempme_composer.bench_conv --device cuda --batch 4 --iters 3
run -t 30 "$PY" -m tempme_composer.bench_metrics --device cuda --sizes 1k 10k
run -t 100 "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts= tests/test_ddp_resume.py tests/test_training_controls.py
echo "=== done, status $status; log in $log ===" | tee -a "$log"
exit $status
