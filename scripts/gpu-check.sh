#!/usr/bin/env bash
# The device check of the CUDA backend, for a machine with an NVIDIA GPU (one
# is enough; about five minutes in all). The benchmark JSON goes to
# bench/results/*_<gpu>.json.
# The logs go to out-gpu/ (packed into $OUT/gpu_check_logs.tgz as well when
# $OUT is set, with the result JSON beside it).
#   1. the engine: the bundle of scripts/gpu-bundle.sh when .devbundle/ holds
#      one (a GPU machine without our Debian packages), else a build with
#      -DFASTVAR_CUDA=ON into build-cuda;
#   2. the Cuda* tests and the backend-op table (BackendOps*, which runs every
#      op on the CUDA backend too): the kernels, VAR and Infinity on the CUDA
#      backend against the golden tensors and the CPU engine (a
#      skipped test means no usable device and counts as a failure); failed
#      tests are rerun with FASTVAR_CUDA_SYNC=1 and under compute-sanitizer;
#   3. check-golden --device cuda, fp32 and bf16, on every VAR and Infinity
#      golden folder (tests/data/golden/*, ../shared/golden/* when present);
#   4. benchmarks, side by side in one run: the Cuda* kernel benchmarks;
#      VAR-d30 256 px and VAR-d36 512 px, batch 1 and 8, full and FastVAR
#      (fastvar bench --device cuda, bf16, random weights); Infinity-2B at
#      1024 px, batch 1, full and FastVAR; and the PyTorch baselines on the
#      same GPU (tools/bench/torch_var.py, torch_infinity.py: bf16 + SDPA);
#   5. the opt-in mma.sync kernels (FASTVAR_ATTN_MMA=1: attention,
#      FASTVAR_CONV_MMA=1: decoder convolutions): check-golden bf16 and the
#      d36 / Infinity-2B benchmarks again with both.
#   GPU_CHECK_BENCH=0 bash scripts/gpu-check.sh   # steps 1-3 only
# With the device tool: here `bash scripts/gpu-bundle.sh` and `bash
# scripts/device-carry.sh drop`, then run this script with carry .devbundle,
# then `bash scripts/device-carry.sh restore`.
set -uo pipefail
cd "$(dirname "$0")/.."
out=out-gpu
mkdir -p "$out" bench/results
t0=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - t0 )) s)"; }
fail=0

stamp devices
nvidia-smi -L
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
tag=$(printf '%s' "$gpu" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '_' | sed 's/^_*//; s/_*$//')
echo "GPU 0: $gpu (results tag: $tag)"

stamp engine
if [ -f .devbundle/bundle.tar.xz ]; then
  # Prebuilt: the binaries look for the tests' data and the CLI under the
  # source folder they were built in; make that path lead here.
  src=$(cat .devbundle/source_dir)
  mkdir -p /tmp/fv && tar -C /tmp/fv -xJf .devbundle/bundle.tar.xz || exit 1
  export LD_LIBRARY_PATH=/tmp/fv/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  if [ "$(pwd)" != "$src" ]; then mkdir -p "$(dirname "$src")" && ln -sfn "$(pwd)" "$src"; fi
  mkdir -p build-gpu/tests build-gpu/bench
  cp /tmp/fv/bin/fastvar /tmp/fv/bin/libfastvar-cuda.so build-gpu/ && cp /tmp/fv/bin/fastvar_tests build-gpu/tests/ &&
    cp /tmp/fv/bin/fastvar_bench build-gpu/bench/ || exit 1
  bin=build-gpu
else
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DFASTVAR_CUDA=ON > /dev/null || exit 1
  grep -q 'FASTVAR_CUDA:BOOL=ON' build-cuda/CMakeCache.txt || { echo "FASTVAR_CUDA is not ON"; exit 1; }
  timeout 420 cmake --build build-cuda -j "$(nproc)" --target fastvar fastvar_tests fastvar_bench || exit 1
  bin=build-cuda
fi
$bin/fastvar info

stamp "Cuda* tests"
timeout 300 $bin/tests/fastvar_tests --gtest_filter='Cuda*:BackendOps*' --gtest_color=no > "$out/cuda_tests.log" 2>&1
rc=$?
grep -E '^\[ +(OK|FAILED|SKIPPED) ' "$out/cuda_tests.log" | sed 's/^/   /'
grep -B2 -A12 'Failure' "$out/cuda_tests.log" | head -120
passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$out/cuda_tests.log")
if [ "$rc" -ne 0 ] || grep -q '^\[  SKIPPED \]' "$out/cuda_tests.log" || [ -z "$passed" ]; then
  echo "gpu-check: Cuda tests FAILED or SKIPPED (exit $rc)"; fail=1
  # Diagnosis of the failed tests: again with every op synchronised (an
  # asynchronous fault then names its op), and under compute-sanitizer memcheck.
  failed=$(sed -n 's/^\[  FAILED  \] \([A-Za-z0-9_]*\.[A-Za-z0-9_]*\).*/\1/p' "$out/cuda_tests.log" | sort -u | head -n 8 | paste -sd: -)
  if [ -n "$failed" ]; then
    echo "   rerunning $failed with FASTVAR_CUDA_SYNC=1"
    FASTVAR_CUDA_SYNC=1 timeout 120 $bin/tests/fastvar_tests --gtest_filter="$failed" --gtest_color=no \
      > "$out/cuda_tests_sync.log" 2>&1
    grep -E 'cuda: |Failure' "$out/cuda_tests_sync.log" | head -20 | sed 's/^/   /'
    san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
    if [ -n "$san" ]; then
      timeout 180 "$san" --tool memcheck --print-limit 20 $bin/tests/fastvar_tests --gtest_filter="$failed" \
        --gtest_color=no > "$out/cuda_tests_memcheck.log" 2>&1
      grep -E 'Invalid|ERROR SUMMARY|at 0x|by thread' "$out/cuda_tests_memcheck.log" | head -20 | sed 's/^/   /'
    fi
  fi
else
  echo "gpu-check: $passed Cuda tests passed on $gpu"
fi

stamp "check-golden --device cuda"
for d in tests/data/golden/* ../shared/golden/*; do
  [ -f "$d/config.json" ] || continue
  if [ -f "$d/golden.safetensors" ]; then w=var_weights      # VAR folders
  elif [ -f "$d/ref_infinity.safetensors" ]; then w=weights_infinity  # Infinity folders
  else continue; fi
  if ! ls "$d"/$w.* > /dev/null 2>&1 || ! [ -e "$(ls "$d"/$w.* | head -n 1)" ]; then
    echo "   $d: skipped (its weights are not on this machine)"; continue
  fi
  for dt in fp32 bf16; do
    log="$out/golden_$(basename "$d")_$dt.log"
    timeout 120 $bin/fastvar check-golden --device cuda --dtype $dt "$d" > "$log" 2>&1
    rc=$?
    echo "   $d $dt: $(tail -n 1 "$log") (exit $rc)"
    grep 'FAIL$' "$log" | head -5
    [ $rc -eq 0 ] || fail=1
  done
done

if [ "${GPU_CHECK_BENCH:-1}" = 0 ]; then
  [ -n "${OUT:-}" ] && tar -czf "$OUT/gpu_check_logs.tgz" "$out"
  stamp done
  exit $fail
fi

stamp "Cuda* kernel benchmarks"
timeout 120 $bin/bench/fastvar_bench --benchmark_filter=Cuda --benchmark_min_time=0.1 \
  --benchmark_out="bench/results/cuda_ops_$tag.json" --benchmark_out_format=json > "$out/cuda_ops.txt" 2>&1 ||
  fail=1
grep -E 'Cuda' "$out/cuda_ops.txt" | awk '{print "   " $1, $2, $3, $NF}' | head -40

stamp "VAR benchmarks: fastvar.cpp (bf16) and PyTorch (bf16 + SDPA)"
export PYTHONUNBUFFERED=1
for cfg in "d30 256 1" "d30 256 8" "d36 512 1" "d36 512 8"; do
  set -- $cfg
  timeout 150 $bin/fastvar bench --device cuda --shape "$1" -n "$3" --modes full,fastvar --runs 3 \
    --json "$out/fastvar_$1_b$3.json" > "$out/fastvar_$1_b$3.txt" 2>&1 || { echo "   fastvar bench $cfg failed"; fail=1; }
  sed 's/^/   /' "$out/fastvar_$1_b$3.txt" | grep -E '==|total|speedup|images/s|weights|peak' | head -12
  timeout 120 python3 tools/bench/torch_var.py --device cuda --dtype bf16 --sdpa --depth "${1#d}" --res "$2" \
    --batch "$3" --runs 3 --json "$out/torch_$1_b$3.json" 2>&1 | tail -n 2 | sed 's/^/   /' ||
    { echo "   torch $cfg failed"; fail=1; }
done
python3 - "$out" "$tag" "$gpu" <<'PY' || fail=1
import glob, json, os, sys
out, tag, gpu = sys.argv[1:4]
rows = []
for cfg in ("d30_b1", "d30_b8", "d36_b1", "d36_b8"):
    try:
        fv = json.load(open(f"{out}/fastvar_{cfg}.json"))[0]
        tv = json.load(open(f"{out}/torch_{cfg}.json"))
    except (OSError, ValueError, IndexError) as e:
        print(f"   {cfg}: missing ({e})"); continue
    t = tv["median"]["total_s"] * 1e3
    row = {"config": cfg, "batch": fv["batch"], "torch_bf16_sdpa_ms": t, "torch_peak_gpu_mib": tv["peak_gpu_mib"],
           "fastvar_device_peak_mib": fv.get("device_peak_mib"), "fastvar_device_weight_mib": fv.get("device_weight_mib"),
           "fastvar_peak_allocated_mib": fv.get("device_peak_allocated_mib")}
    for m in ("full", "fastvar"):
        ms = fv["modes"][m]["total_ms_median"]
        row[f"{m}_ms"] = ms
        row[f"{m}_images_per_s"] = fv["modes"][m]["images_per_s"]
        row[f"{m}_speedup_vs_torch"] = t / ms
    rows.append(row)
    print(f"   {cfg}: torch {t:8.1f} ms | fastvar.cpp full {row['full_ms']:8.1f} ms ({row['full_speedup_vs_torch']:.2f}x)"
          f" | FastVAR {row['fastvar_ms']:8.1f} ms ({row['fastvar_speedup_vs_torch']:.2f}x) | peak allocated MiB:"
          f" torch {row['torch_peak_gpu_mib']:.0f}, ours {row['fastvar_peak_allocated_mib'] or 0:.0f}"
          f" (weights {row['fastvar_device_weight_mib'] or 0:.0f})")
res = {"gpu": gpu, "summary": rows,
       "fastvar": [json.load(open(f)) for f in sorted(glob.glob(f"{out}/fastvar_*.json"))],
       "torch": [json.load(open(f)) for f in sorted(glob.glob(f"{out}/torch_*.json"))]}
json.dump(res, open(f"bench/results/var_cuda_vs_torch_{tag}.json", "w"), indent=1)
print(f"   wrote bench/results/var_cuda_vs_torch_{tag}.json")
PY
stamp "Infinity-2B 1024px: fastvar.cpp (bf16) and PyTorch (bf16 + SDPA)"
timeout 240 $bin/fastvar bench --device cuda --shape infinity-2b -n 1 --modes full,fastvar --runs 3 \
  --json "$out/fastvar_infinity2b_b1.json" > "$out/fastvar_infinity2b_b1.txt" 2>&1 ||
  { echo "   fastvar bench infinity-2b failed"; fail=1; }
sed 's/^/   /' "$out/fastvar_infinity2b_b1.txt" | grep -E '==|total|speedup|images/s|weights|peak|error' | head -12
timeout 200 python3 tools/bench/torch_infinity.py --preset 2b --device cuda --dtype bf16 --sdpa --batch 1 \
  --runs 3 --json "$out/torch_infinity2b_b1.json" 2>&1 | tail -n 2 | sed 's/^/   /' ||
  { echo "   torch infinity-2b failed"; fail=1; }
python3 - "$out" "$tag" "$gpu" <<'PY' || fail=1
import json, sys
out, tag, gpu = sys.argv[1:4]
try:
    fv = json.load(open(f"{out}/fastvar_infinity2b_b1.json"))[0]
    tv = json.load(open(f"{out}/torch_infinity2b_b1.json"))
except (OSError, ValueError, IndexError) as e:
    print(f"   infinity-2b: missing ({e})"); sys.exit(1)
t = tv["median"]["total_s"] * 1e3
row = {"config": "infinity-2b 1024px b1", "torch_bf16_sdpa_ms": t, "torch_peak_gpu_mib": tv["peak_gpu_mib"],
       "fastvar_device_peak_mib": fv.get("device_peak_mib"), "fastvar_device_weight_mib": fv.get("device_weight_mib"),
       "fastvar_peak_allocated_mib": fv.get("device_peak_allocated_mib")}
for m in ("full", "fastvar"):
    ms = fv["modes"][m]["total_ms_median"]
    row[f"{m}_ms"] = ms
    row[f"{m}_speedup_vs_torch"] = t / ms
print(f"   infinity-2b: torch {t:8.1f} ms | fastvar.cpp full {row['full_ms']:8.1f} ms ({row['full_speedup_vs_torch']:.2f}x)"
      f" | FastVAR {row['fastvar_ms']:8.1f} ms ({row['fastvar_speedup_vs_torch']:.2f}x; goal <= 350 ms on an H100)"
      f" | peak allocated MiB: torch {row['torch_peak_gpu_mib'] or 0:.0f}, ours {row['fastvar_peak_allocated_mib'] or 0:.0f}"
      f" (weights {row['fastvar_device_weight_mib'] or 0:.0f})")
json.dump({"gpu": gpu, "summary": [row], "fastvar": fv, "torch": tv},
          open(f"bench/results/infinity_cuda_vs_torch_{tag}.json", "w"), indent=1)
print(f"   wrote bench/results/infinity_cuda_vs_torch_{tag}.json")
PY
# The opt-in tensor-core kernels together (each has its own Cuda* kernel tests
# above, which tell them apart when this stage fails).
with_optin() { FASTVAR_ATTN_MMA=1 FASTVAR_CONV_MMA=1 "$@"; }
stamp "opt-in mma.sync kernels (FASTVAR_ATTN_MMA=1 FASTVAR_CONV_MMA=1): check-golden bf16, benchmarks"
for d in tests/data/golden/var_tiny_a tests/data/golden/infinity_tiny_a; do
  log="$out/golden_$(basename "$d")_bf16_mma.log"
  with_optin timeout 120 $bin/fastvar check-golden --device cuda --dtype bf16 "$d" > "$log" 2>&1
  rc=$?
  echo "   $d bf16 mma: $(tail -n 1 "$log") (exit $rc)"
  [ $rc -eq 0 ] || fail=1
done
for cfg in "d36 1" "d36 8" "infinity-2b 1"; do
  set -- $cfg
  with_optin timeout 240 $bin/fastvar bench --device cuda --shape "$1" -n "$2" --modes full,fastvar \
    --runs 3 --json "$out/fastvar_mma_$1_b$2.json" > "$out/fastvar_mma_$1_b$2.txt" 2>&1 ||
    { echo "   fastvar bench (mma) $cfg failed"; fail=1; }
  echo "   mma $cfg:"; sed 's/^/     /' "$out/fastvar_mma_$1_b$2.txt" | grep -E 'total|speedup|images/s|error' | head -6
done

cp bench/results/*_"$tag".json "$out"/ 2>/dev/null
if [ -n "${OUT:-}" ]; then
  tar -czf "$OUT/gpu_check_logs.tgz" "$out"
  cp bench/results/*_"$tag".json "$OUT"/ 2>/dev/null
fi
stamp done
[ $fail -eq 0 ] && echo "gpu-check: OK" || echo "gpu-check: FAILED (see above)"
exit $fail
