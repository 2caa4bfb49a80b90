#!/usr/bin/env bash
# Infinity-2B shapes on the CPU (#18 item 5): `fastvar bench --shape infinity-2b` (full model and the
# reference FastVAR plan) against this project's PyTorch Infinity (tools/infinity/infinity_torch.py,
# checked against the official code's golden tensors by tools/infinity/check_torch_infinity.py) on
# today's PyPI torch in a venv (tools/bench/torch_infinity.py, SDPA, full model), one after the
# other in one invocation, same thread count, the same generation (random weights drawn alike, a
# 77-token text stand-in: T5 is not run). Both warm up once before timing (the peer always does).
# Medians of RUNS; the combined JSON names the CPU, its flags, the threads and the torch version.
#
#   bash bench/run_infinity_vs_torch.sh [--pn 0.25M] [--runs 1] [--threads 2] [--dtype fp32]
#                                       [--out bench/results/infinity2b_0.25M_cpu_vs_torch.json]
set -euo pipefail
cd "$(dirname "$0")/.."
pn=0.25M runs=1 threads=2 dtype=fp32 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --pn) pn="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--pn 0.06M|0.25M|0.60M|1M] [--runs N] [--threads T] [--dtype fp32|bf16] [--out FILE.json]" >&2
       exit 2 ;;
  esac
done
[ -n "$out" ] || out="bench/results/infinity2b_${pn}_cpu_vs_torch.json"
source bench/torch_venv.sh  # fv: the fastvar binary; TORCH_PYTHON: the peer's python
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$fv" bench --shape infinity-2b --pn "$pn" --modes full,fastvar --runs "$runs" --warmup 1 -t "$threads" \
  --dtype "$dtype" --json "$tmp/fastvar.json" >&2
"$TORCH_PYTHON" tools/bench/torch_infinity.py --preset 2b --pn "$pn" --sdpa --dtype "$dtype" --runs "$runs" \
  --threads "$threads" --json "$tmp/torch.json" >&2
mkdir -p "$(dirname "$out")"
python3 - "$tmp" "$out" <<'PY'
import json, sys
tmp, out = sys.argv[1], sys.argv[2]
fv = json.load(open(f"{tmp}/fastvar.json"))[0]
pt = json.load(open(f"{tmp}/torch.json"))
sys.path.insert(0, "tools/bench")
from machine import cpu_info
res = {**cpu_info(), "fastvar": fv, "torch": pt}
t = pt["median"]
print(f"| Infinity-2B {pt['pn']}, {fv['dtype']}, {fv['threads']} threads | fastvar.cpp | torch {pt['torch_version']} "
      "(own port, SDPA, full) | torch full / fastvar |")
print("|---|---:|---:|---:|")
for m in ("full", "fastvar"):
    f = fv["modes"][m]
    f_s, dec_s = f["total_ms_median"] / 1e3, f["scale_ms"][-1] / 1e3
    res[f"speedup_vs_torch_full_{m}"] = t["total_s"] / f_s
    print(f"| {m} | {f_s:.1f} s (transformer {f_s - dec_s:.1f} s, decoder {dec_s:.1f} s) | {t['total_s']:.1f} s "
          f"(transformer {t['transformer_s']:.1f} s, decoder {t['decode_s']:.1f} s) | {t['total_s'] / f_s:.2f}x |")
print(f"peak RSS: fastvar.cpp {fv['peak_rss_mib']:.0f} MiB (both modes, one process); torch {pt['peak_rss_mib']:.0f} MiB")
json.dump(res, open(out, "w"), indent=1)
PY
