#!/usr/bin/env bash
# GPU check: everything that cannot run on a CPU-only CI machine, in one log. Needs one CUDA GPU.
#   bash scripts/gpu_check.sh [LOG]        (default log: gpu_check.log; the efficiency JSON lands beside it)
# Runs: the gpu-marked tests (bf16/fp16 autocast of the four model variants, fused attention kernels, AMP
# training, FSDP, the FFT pixel convolution), the pixel-convolution check (STOP and unified train step,
# ViT-B/32, batch 32, bf16, with model.stop.conv_impl direct, fft and auto: videos/s, ratio over direct and
# MFU; it confirms or corrects conv_impl auto = fft on CUDA), the efficiency table (baseline / TempMe / STOP /
# unified x ViT-B/32 / ViT-B/16, 12 frames, batch 32, bf16, default conv_impl, with model FLOP utilisation),
# a short amp_bf16 training run of the unified model on the demo data, then the evaluation and Conv3d-stack
# benchmarks on the GPU. Expected on one H100: tests ~80 s, conv check ~60 s (its direct rows are the slow
# ones), table ~60-125 s, demo ~45 s, evaluation ~25 s, so the last steps are the ones the budget may skip.
# The efficiency header names torch and the GPU.
# Time: the whole check keeps to GPU_CHECK_BUDGET seconds (default 290, i.e. under 5 minutes, wheel install
# included). Each step has its own limit, cut to what is left of the budget; a step that finds the budget spent
# is logged as SKIPPED. Exit status: 0 all passed, 1 a step failed or timed out, 2 none failed but some skipped.
# On a bare machine that has PyTorch but not this project's other dependencies, wheels placed in .whl/ are
# installed into /tmp/site first (pip download them elsewhere; see docs/benchmarks.md#gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-gpu_check.log}
PY=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET:-290}
deadline=$((SECONDS + budget))
status=0
run() {  # run [-t SECONDS] CMD...: one step, its output in the log; a failure or timeout marks the check failed
  local limit=600
  if [ "$1" = -t ]; then limit=$2; shift 2; fi
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 5 ]; then
    echo "=== SKIPPED (the ${budget} s budget is spent): $* ===" | tee -a "$log"
    [ "$status" -eq 1 ] || status=2
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "=== $* (limit ${limit} s) ===" | tee -a "$log"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $((SECONDS - start)) s ===" | tee -a "$log"
  [ "$rc" -eq 0 ] || { echo "=== FAILED (exit $rc; 124 = timed out): $* ===" | tee -a "$log"; status=1; }
}
: > "$log"
if [ -d .whl ] && ! "$PY" -c 'import composer, streaming, av, simplejpeg' 2>/dev/null; then
  run "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
run nvidia-smi
run -t 100 "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts= tests/model/test_gpu_kernels.py \
  tests/training/test_ddp_resume.py tests/training/test_training_controls.py tests/data/test_uint8_frames.py tests/data/test_frame_pool.py
run -t 90 "$PY" -m tempme_composer.bench efficiency --device cuda --bf16 --batch 32 --iters 2 --warmup 1 \
  --presets ViT-B/32 --configs stop unified --conv-impls direct fft auto --json "$(dirname "$log")/conv_impl_gpu.json"
run -t 150 "$PY" -m tempme_composer.bench efficiency --device cuda --bf16 --batch 32 --iters 2 --warmup 1 \
  --json "$(dirname "$log")/efficiency_gpu.json"
run -t 60 "$PY" recipes/train.py yamls/demo_unified.yaml precision=amp_bf16 output_dir=outputs/gpu_check_demo
run -t 40 "$PY" -m tempme_composer.bench metrics --device cuda --sizes 1k 10k 60kx3k
run -t 30 "$PY" -m tempme_composer.bench conv --device cuda --batch 4 --iters 3
echo "=== done in $SECONDS s (budget ${budget} s), status $status; log in $log ===" | tee -a "$log"
exit $status
