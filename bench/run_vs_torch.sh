#!/usr/bin/env bash
# fastvar.cpp against today's PyTorch on the CPU, on the same checkpoint files, interleaved in one
# invocation on the same machine and thread count. The peer is the torch a user installs today from
# PyPI, in a venv this script makes (build/venv-torch; PYTHON=... uses another interpreter instead):
#   - fastvar bench -m VAR --vae VAE (fp32 and int8; bf16 too where this CPU runs it), full model and FastVAR;
#   - tools/bench/torch_var.py: this project's PyTorch VAR (tools/train/, checked against the golden
#     folder by tests), F.scaled_dot_product_attention, fp32 and torch.autocast bf16;
#   - tools/bench/official_var.py: the official FoundationVision/VAR code, when a local copy of it is
#     named by VAR_OFFICIAL_DIR (never part of this repository), fp32 and autocast bf16.
# The checkpoints are random weights of the release layout (tools/make_random_var.py), made once in
# build/vs_torch/. Medians of RUNS, ratios peer_total / fastvar_total, the CPU model and flags, the
# oneDNN ISA and the torch version go to one JSON; a Markdown table goes to stdout.
#
#   bash bench/run_vs_torch.sh [--runs 3] [--threads 2] [--depth 16] [--out bench/results/vs_torch_d16_<cpu>.json]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 threads=2 depth=16 out=
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --depth) depth="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--threads T] [--depth 16|20|24|30] [--out FILE.json]" >&2; exit 2 ;;
  esac
done
source bench/torch_venv.sh  # fv: the fastvar binary; TORCH_PYTHON: the peer's python
py="$TORCH_PYTHON"
cpu_tag="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//; s/[^A-Za-z0-9]\+/_/g; s/_$//')"
out="${out:-bench/results/vs_torch_d${depth}_${cpu_tag}.json}"
ck=build/vs_torch
mkdir -p "$ck" "$(dirname "$out")"
var="$ck/var_d${depth}.pth" vae="$ck/vae_ch160v4096z32.pth"
[ -f "$var" ] || "$py" tools/make_random_var.py --depth "$depth" --out "$var" >&2
[ -f "$vae" ] || "$py" tools/make_random_var.py --vae --out "$vae" >&2
# bf16 needs AVX512_BF16 or AMX: fastvar refuses it elsewhere, and PyTorch's autocast falls back to
# emulation there (minutes per d16 image on an AVX2 Zen), so both run fp32 only on such a CPU
# (TORCH_DTYPES="fp32 bf16" forces the peer's bf16 anyway).
# fastvar's int8 (--dtype int8) runs on any x86 CPU; the peer has no int8 path to compare.
peer_dtypes=fp32
if grep -qw -e avx512_bf16 -e amx_bf16 /proc/cpuinfo; then peer_dtypes="fp32 bf16"; fi
fv_dtypes="$peer_dtypes int8"
torch_dtypes="${TORCH_DTYPES:-$peer_dtypes}"
official="${VAR_OFFICIAL_DIR:-}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

for r in $(seq 1 "$runs"); do
  for dt in $fv_dtypes; do
    echo "== run $r/$runs: fastvar $dt" >&2
    "$fv" bench -m "$var" --vae "$vae" --modes full,fastvar --runs 1 -t "$threads" --dtype "$dt" \
      --json "$tmp/fastvar_${dt}_$r.json" >&2
  done
  for dt in $torch_dtypes; do
    echo "== run $r/$runs: torch port $dt" >&2
    "$py" tools/bench/torch_var.py --var-ckpt "$var" --vae-ckpt "$vae" --sdpa --runs 1 --threads "$threads" \
      --dtype "$dt" --json "$tmp/port_${dt}_$r.json" >&2
    if [ -n "$official" ]; then
      echo "== run $r/$runs: official VAR $dt" >&2
      "$py" tools/bench/official_var.py --var-dir "$official" --var-ckpt "$var" --vae-ckpt "$vae" --runs 1 \
        --threads "$threads" --dtype "$dt" --json "$tmp/official_${dt}_$r.json" >&2
    fi
  done
done

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
flags="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_int8|fma)$' | sort | tr '\n' ' ' | sed 's/ $//')"
isa="$("$fv" info 2>/dev/null | head -1)"
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
"$py" - "$tmp" "$out" "$runs" "$threads" "$depth" "$cpu" "$flags" "$isa" "$rev" "$fv_dtypes" <<'EOF'
import glob, json, statistics, sys
tmp, out, runs, threads, depth, cpu, flags, isa, rev, fv_dtypes = sys.argv[1:]
med = statistics.median
res = {}
for dt in fv_dtypes.split():
    for mode in ("full", "fastvar"):
        rr = []
        for p in sorted(glob.glob(f"{tmp}/fastvar_{dt}_*.json")):
            j = json.load(open(p))[0]
            m = j["modes"][mode]  # scale_ms: one per scale, then the decoder
            rr.append({"transformer_s": sum(m["scale_ms"][:-1]) / 1e3, "decode_s": m["scale_ms"][-1] / 1e3,
                       "total_s": m["total_ms_median"] / 1e3, "peak_rss_mib": j["peak_rss_mib"]})
        res[f"fastvar-{mode}_{dt}"] = rr
torch_version = None
for peer in ("port", "official"):
    for dt in ("fp32", "bf16"):
        rr = []
        for p in sorted(glob.glob(f"{tmp}/{peer}_{dt}_*.json")):
            j = json.load(open(p))
            torch_version = j["torch_version"]
            rr.append(dict(j["runs"][0], peak_rss_mib=j["peak_rss_mib"]))
        if rr:
            res[f"torch-{peer}_{dt}"] = rr
keys = ("transformer_s", "decode_s", "total_s", "peak_rss_mib")
median = {e: {k: med([x[k] for x in rr]) for k in keys} for e, rr in res.items()}
fvs = [e for e in median if e.startswith("fastvar-full")]
ratios = {f"{t}/{f}": median[t]["total_s"] / median[f]["total_s"] for t in median if t.startswith("torch") for f in fvs}
doc = {"cpu": cpu, "cpu_flags": flags, "fastvar_cpu": isa, "threads": int(threads), "runs": int(runs),
       "depth": int(depth), "batch": 1, "git_head": rev, "torch_version": torch_version, "engines": res,
       "median": median, "ratio_total": ratios}
json.dump(doc, open(out, "w"), indent=1)
print(f"VAR-d{depth}, 256 px, batch 1, the same random-weight checkpoints; {cpu} ({flags}), {threads} "
      f"thread(s); median of {runs} interleaved run(s); git {rev}, torch {torch_version} (PyPI)\n")
print("| engine | dtype | transformer s | decode s | total s | peak RSS MiB | "
      + " | ".join(f"total / {f.split('_')[0]} {f.split('_')[1]}" for f in fvs) + " |")
print("|---|---|---:|---:|---:|---:|" + "---:|" * len(fvs))
for e, m in median.items():
    eng, dt = e.split("_")
    cols = " | ".join(f"{m['total_s'] / median[f]['total_s']:.2f}x" for f in fvs)
    print(f"| {eng} | {dt} | {m['transformer_s']:.2f} | {m['decode_s']:.2f} | {m['total_s']:.2f} | "
          f"{m['peak_rss_mib']:.0f} | {cols} |")
print(f"\n(JSON: {out})")
EOF
