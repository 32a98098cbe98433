#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (e.g. the project's H100 through the device tool): builds
# mybag's CUDA kernels, runs every CUDA test, runs compute-sanitizer (memcheck and racecheck)
# over the CUDA tests, and a first side-by-side timing against torch. Everything it prints is
# also written under $OUT (default build/gpu-check) for the record.
#
#   OUT=/some/dir bash scripts/gpu_check.sh
#
# It needs no network: tests whose modules cannot be imported there (a missing hypothesis,
# say) are reported as collection errors and the rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-build/gpu-check}"
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MYBAG_WITH_CUDA=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
status=0

step() { echo; echo "== $*" | tee -a "$OUT/summary.txt"; }

step "device"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  date -u
} 2>&1 | tee "$OUT/device.txt" | tee -a "$OUT/summary.txt"

step "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
if ! pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"
  exit 1
fi
grep "^mybag:" "$OUT/build.log" | tee -a "$OUT/summary.txt"

step "CUDA tests"
python -m pytest tests --ignore=tests/frontends/test_cpp.py -k cuda -q -p no:cacheprovider \
  --continue-on-collection-errors -rfE >"$OUT/tests.log" 2>&1 || status=1
tail -15 "$OUT/tests.log" | tee -a "$OUT/summary.txt"

# Memory errors anywhere in the kernels (out-of-bounds reads or writes, misaligned accesses,
# use of freed memory); the test_cuda_only cases include bad input with checks off.
step "compute-sanitizer memcheck"
compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
  python -m pytest tests/op/test_cuda_only.py tests/op/test_parity.py tests/op/test_gradients.py \
  tests/op/test_quantized.py tests/op/test_fused_optimizer.py tests/op/test_row_shard_ops.py \
  -k cuda -q \
  -p no:cacheprovider -x >"$OUT/memcheck.log" 2>&1 || status=1
grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck.log" | tail -5 | tee -a "$OUT/summary.txt"

# Shared-memory races (the kernels use none today; this keeps it so).
step "compute-sanitizer racecheck"
compute-sanitizer --tool racecheck --error-exitcode 99 --print-limit 20 \
  python -m pytest tests/op/test_cuda_only.py -k cuda -q -p no:cacheprovider -x \
  >"$OUT/racecheck.log" 2>&1 || status=1
grep -E "RACECHECK SUMMARY|ERROR SUMMARY|passed|failed" "$OUT/racecheck.log" | tail -5 |
  tee -a "$OUT/summary.txt"

step "benchmark against torch (quick grid)"
python -m mybag.bench --device cuda --quick --out "$OUT/bench" >"$OUT/bench.log" 2>&1 || status=1
tail -40 "$OUT/bench.log" | tee -a "$OUT/summary.txt"

step "exit status $status"
exit "$status"
