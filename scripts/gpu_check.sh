#!/usr/bin/env bash
# GPU check: everything that cannot run on a CPU-only CI machine, in one log. Needs one CUDA GPU.
#   bash scripts/gpu_check.sh [LOG]        (default log: gpu_check.log)
# Runs: the gpu-marked tests (AMP bf16 training, FSDP train/checkpoint/resume), the TempMe efficiency benchmark
# in bf16 with peak memory, the evaluation benchmark on the GPU, and a short amp_bf16 demo training run.
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-gpu_check.log}
status=0
run() {
  echo "=== $* ===" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== FAILED ($rc): $* ===" | tee -a "$log"; status=1; }
}
: > "$log"
run nvidia-smi
run python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
run python -m pytest -m gpu -q -p no:cacheprovider
run python -m tempme_composer.bench_tempme --presets ViT-B/32 ViT-B/16 --device cuda --bf16 --batch 32 --iters 5 --train-step
run python -m tempme_composer.bench_metrics --device cuda --sizes 1k 10k 60kx3k 100k
run composer recipes/train.py yamls/demo.yaml precision=amp_bf16 epochs=5 output_dir=outputs/gpu_check_demo
echo "=== done, status $status; log in $log ===" | tee -a "$log"
exit $status
