#!/usr/bin/env bash
# The device check of the CUDA backend, for a machine with an NVIDIA GPU (one
# is enough; a few minutes in all): builds with -DFASTVAR_CUDA=ON into
# build-cuda, runs the Cuda* tests (CUDA ops vs CPU ops; a skipped test means
# that no device was usable and counts as a failure), then the Cuda* kernel
# benchmarks into bench/results/cuda_ops_<gpu>.json.
#   bash scripts/gpu-check.sh                 # everything
#   GPU_CHECK_BENCH=0 bash scripts/gpu-check.sh   # tests only
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== devices"
nvidia-smi -L
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
tag=$(printf '%s' "$gpu" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '_' | sed 's/^_*//; s/_*$//')
echo "GPU 0: $gpu (results tag: $tag)"

echo "== build (build-cuda, FASTVAR_CUDA=ON)"
start=$(date +%s)
cfg_log=$(mktemp)
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DFASTVAR_CUDA=ON > "$cfg_log" 2>&1 ||
  { cat "$cfg_log"; exit 1; }
grep 'fastvar: CUDA' "$cfg_log" || true
rm -f "$cfg_log"
grep -q 'FASTVAR_CUDA:BOOL=ON' build-cuda/CMakeCache.txt || { echo "FASTVAR_CUDA is not ON"; exit 1; }
timeout 420 cmake --build build-cuda -j "$(nproc)" --target fastvar_tests fastvar_bench
echo "build: $(( $(date +%s) - start )) s"

echo "== Cuda* tests"
log=build-cuda/gpu-check-tests.log
set +e
timeout 240 build-cuda/tests/fastvar_tests --gtest_filter='Cuda*' --gtest_color=no 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  echo "gpu-check: Cuda tests FAILED (exit $rc)"
  exit 1
fi
if grep -q '^\[  SKIPPED \]' "$log"; then
  echo "gpu-check: some Cuda tests were SKIPPED (no usable CUDA device; see 'no CUDA device:' above;"
  echo "  a CUDA 13 build needs an r580+ driver)"
  exit 1
fi
passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log")
if [ -z "$passed" ] || [ "$passed" -lt 5 ]; then
  echo "gpu-check: expected the Cuda tests to run, got '${passed:-none}' passed"
  exit 1
fi
echo "gpu-check: $passed Cuda tests passed on $gpu"

if [ "${GPU_CHECK_BENCH:-1}" = 0 ]; then exit 0; fi
echo "== Cuda* benchmarks"
mkdir -p bench/results
out="bench/results/cuda_ops_${tag}.json"
timeout 240 build-cuda/bench/fastvar_bench --benchmark_filter=Cuda --benchmark_format=json \
  --benchmark_min_time=0.2 > "$out.tmp"
mv "$out.tmp" "$out"
if command -v python3 > /dev/null; then
  python3 - "$out" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for b in d["benchmarks"]:
    if b.get("error_occurred"):
        print(f'{b["name"]:<48} ERROR {b.get("error_message", "")}')
        continue
    extra = "  ".join(f"{k} {b[k]:.3g}" for k in ("TFLOP/s", "GB/s") if k in b)
    print(f'{b["name"]:<48} {b["us/call"]:10.1f} us/call  {extra}')
EOF
fi
if grep -q '"error_occurred": true' "$out"; then
  echo "gpu-check: a benchmark reported an error (see $out)"
  exit 1
fi
echo "gpu-check: OK ($out)"
