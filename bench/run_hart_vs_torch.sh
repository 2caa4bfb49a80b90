#!/usr/bin/env bash
# HART-0.7B shapes at 1024 px on the CPU, full model and FastVAR: `fastvar bench --shape hart-0.7b`
# against this project's PyTorch HART (tools/hart/hart_torch.py, checked against the official code's
# golden tensors by tools/hart/check_torch_hart.py) on today's PyPI torch in a venv
# (tools/bench/torch_hart.py, SDPA), one after the other in one invocation, same thread count, the
# same generation (random weights drawn alike, a 300-token text prefix, more_smooth, 8 diffusion
# steps; the text encoder is not run). Medians of RUNS; the combined JSON names the CPU, its flags,
# the threads and the torch version.
#
#   bash bench/run_hart_vs_torch.sh [--runs 1] [--warmup 0] [--threads 2] [--dtype fp32]
#                                   [--out bench/results/hart07b_1024_cpu_vs_torch.json]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=1 warmup=0 threads=2 dtype=fp32 out=bench/results/hart07b_1024_cpu_vs_torch.json
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--warmup N] [--threads T] [--dtype fp32|bf16] [--out FILE.json]" >&2; exit 2 ;;
  esac
done
source bench/torch_venv.sh  # fv: the fastvar binary; TORCH_PYTHON: the peer's python
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$fv" bench --shape hart-0.7b --modes full,fastvar --runs "$runs" --warmup "$warmup" -t "$threads" --dtype "$dtype" \
  --json "$tmp/fastvar.json" >&2
for mode in full fastvar; do
  flag=""
  [ "$mode" = fastvar ] && flag="--fastvar"
  "$TORCH_PYTHON" tools/bench/torch_hart.py --preset 0.7b $flag --sdpa --dtype "$dtype" --runs "$runs" \
    --warmup "$warmup" --threads "$threads" --json "$tmp/torch_$mode.json" >&2
done
mkdir -p "$(dirname "$out")"
python3 - "$tmp" "$out" <<'PY'
import json, sys
tmp, out = sys.argv[1], sys.argv[2]
fv = json.load(open(f"{tmp}/fastvar.json"))[0]
pt = {m: json.load(open(f"{tmp}/torch_{m}.json")) for m in ("full", "fastvar")}
sys.path.insert(0, "tools/bench")
from machine import cpu_info
res = {**cpu_info(), "fastvar": fv, "torch": pt}
print(f"| HART-0.7B 1024 px, {fv['dtype']}, {fv['threads']} threads | fastvar.cpp | torch {pt['full']['torch_version']} "
      "(own port, SDPA) | torch / fastvar |")
print("|---|---:|---:|---:|")
for m in ("full", "fastvar"):
    f_s = fv["modes"][m]["total_ms_median"] / 1e3
    t_s = pt[m]["median"]["total_s"]
    res[f"speedup_vs_torch_{m}"] = t_s / f_s
    print(f"| {m} | {f_s:.1f} s (diffusion {fv['modes'][m]['diffusion_ms'] / 1e3:.1f} s) | {t_s:.1f} s "
          f"(diffusion {pt[m]['median']['diffusion_s']:.1f} s, decode {pt[m]['median']['decode_s']:.1f} s) "
          f"| {t_s / f_s:.2f}x |")
res["fastvar_over_full"] = {"fastvar.cpp": fv["modes"]["full"]["total_ms_median"] / fv["modes"]["fastvar"]["total_ms_median"],
                            "torch": pt["full"]["median"]["total_s"] / pt["fastvar"]["median"]["total_s"]}
print(f"peak RSS: fastvar.cpp {fv['peak_rss_mib']:.0f} MiB (both modes, one process); torch "
      f"{pt['full']['peak_rss_mib']:.0f} MiB full, {pt['fastvar']['peak_rss_mib']:.0f} MiB FastVAR")
json.dump(res, open(out, "w"), indent=1)
PY
