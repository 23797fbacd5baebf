#!/usr/bin/env bash
# One-shot GPU check (issue 9), for a machine with CUDA; about 10 minutes on one H200:
#   1. the virtual environment (reused when cached) and a check that torch sees the GPU;
#   2. the CUDA tests: pytest -m gpu;
#   3. `invad bench --device cuda` at 256 px, batch 32..256, S = 1..5 (bf16 autocast and channels_last
#      are the detector's CUDA defaults), without torch.compile, then with it (default and
#      reduce-overhead = CUDA graphs);
#   4. the pipeline with the real detector on the GPU through real Kafka, Redis and S3 on loopback;
#   5. docs/gpu/REPORT.md (+ the JSON files) from what ran.
# Each step has its own time limit; a step that fails or runs out is recorded and the next one runs.
# INVAD_GPU_OUT overrides the output folder; INVAD_GPU_QUICK=1 runs a smaller grid.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
out=${INVAD_GPU_OUT:-$repo/docs/gpu}
mkdir -p "$out"
log="$out/gpu_check.log"
: >"$log"
say() { echo "[gpu_check] $*" | tee -a "$log" >&2; }

python=$(scripts/setup_venv.sh | tail -n 1) || { say "venv setup failed"; exit 1; }
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  say "torch sees no CUDA device here: nothing to check (this script is for GPU machines)"
  exit 3
fi
"$python" -c 'import torch; print("[gpu_check]", torch.__version__, torch.cuda.get_device_name(0))' | tee -a "$log"

batches=32,64,128,256; steps=1,2,3,4,5; images=2000
if [ "${INVAD_GPU_QUICK:-0}" = 1 ]; then batches=64,256; steps=3; images=500; fi

step() { # $1 = seconds, $2 = name, rest = command
  local limit=$1 name=$2; shift 2
  local t0=$SECONDS
  say "step $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  say "step $name: exit $rc after $((SECONDS - t0)) s"
  return 0
}

step 180 pytest bash -c "\"$python\" -m pytest -q -m gpu tests/core/test_gpu.py tests/pipeline/test_metrics_unit.py \
  | tail -n 1 > \"$out/pytest.txt\""
for mode in off default reduce-overhead; do
  step 150 "bench-$mode" "$python" -m worker.cli bench --device cuda --image-size 256 --batch-sizes "$batches" \
    --steps "$steps" --repeats 3 --compile "$mode" --out "$out/detector-$mode.json"
done
step 60 services-install scripts/services.sh install
step 120 services-start scripts/services.sh start
# shellcheck disable=SC1090
source "${INVAD_RUN_DIR:-${INVAD_CACHE:-$HOME/.cache/invad}/run}/services.env" 2>/dev/null || true
step 240 pipeline "$python" -m worker.cli bench pipeline --device cuda --image-size 256 --batch-sizes 256 \
  --images "$images" --repeats 1 --workers-scaling off --bootstrap "${INVAD_TEST_KAFKA:-}" \
  --redis-url "${INVAD_TEST_REDIS_URL:-}" --s3-endpoint "${INVAD_TEST_S3_ENDPOINT:-}" \
  --s3-access-key "${INVAD_TEST_S3_ACCESS_KEY:-}" --s3-secret-key "${INVAD_TEST_S3_SECRET_KEY:-}" \
  --out "$out/pipeline.json"
scripts/services.sh stop >>"$log" 2>&1 || true
"$python" -m worker.bench.gpu_report "$out" | tee -a "$log"
