#!/usr/bin/env bash
# HART's text encoder (Qwen2-VL-1.5B's language model, random weights of its shapes) on the CPU:
# fastvar bench --shape qwen2-1.5b against transformers' Qwen2Model on today's PyPI torch
# (tools/bench/torch_qwen2.py), one after the other in one invocation, same thread count, a
# 600-token row (HART's system prompt truncated to 300 + a 300-token prompt). Medians of RUNS;
# the combined JSON names the CPU, the threads and the torch version.
#
#   bash bench/run_qwen2_vs_torch.sh [--runs 3] [--threads 2] [--out bench/results/qwen2_1.5b_cpu_vs_torch.json]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 threads=2 out=bench/results/qwen2_1.5b_cpu_vs_torch.json
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--threads T] [--out FILE.json]" >&2; exit 2 ;;
  esac
done
source bench/torch_venv.sh  # fv: the fastvar binary; TORCH_PYTHON: the peer's python
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$fv" bench --shape qwen2-1.5b --runs "$runs" -t "$threads" --json "$tmp/fastvar.json" >&2
"$TORCH_PYTHON" tools/bench/torch_qwen2.py --runs "$runs" --threads "$threads" --json "$tmp/torch.json" >/dev/null
mkdir -p "$(dirname "$out")"
python3 - "$tmp/fastvar.json" "$tmp/torch.json" "$out" <<'PY'
import json, sys
fv = json.load(open(sys.argv[1]))[0]
pt = json.load(open(sys.argv[2]))
sys.path.insert(0, "tools/bench")
from machine import cpu_info
res = {**cpu_info(), "fastvar": fv, "torch": pt,
       "speedup_vs_torch": pt["ms_median"] / fv["ms_median"]}
json.dump(res, open(sys.argv[3], "w"), indent=1)
print(f"| Qwen2-1.5B encoder, 600 tokens, fp32, {fv['threads']} threads | fastvar {fv['ms_median'] / 1e3:.2f} s, "
      f"{fv['peak_rss_mib']:.0f} MiB | torch {pt['torch']} {pt['ms_median'] / 1e3:.2f} s, {pt['peak_rss_mib']:.0f} MiB "
      f"| {res['speedup_vs_torch']:.2f}x |")
PY
