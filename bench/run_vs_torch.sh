#!/usr/bin/env bash
# fastvar.cpp vs PyTorch (tools/bench/torch_var.py, the project's own PyTorch VAR code) on random weights
# of a release shape, same machine, same thread count, interleaved in one invocation: for each run
# fastvar fp32 [, fastvar bf16 if `fastvar bench` has --dtype], torch fp32, torch bf16 (autocast).
# Medians of RUNS and ratios torch_total / fastvar_total go to one JSON; a Markdown table goes to
# stdout (progress to stderr). PyTorch runs with $PYTHON (default /usr/bin/python3, Debian's torch).
#
#   bash bench/run_vs_torch.sh [--runs N] [--threads T] [--depth 16] [--out bench/results/vs_torch_d16.json]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 threads=2 depth=16 out=
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --depth) depth="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--threads T] [--depth 16|30] [--out FILE.json]" >&2; exit 2 ;;
  esac
done
out="${out:-bench/results/vs_torch_d${depth}.json}"
py="${PYTHON:-/usr/bin/python3}"
fv=./build/fastvar
[ -x "$fv" ] || { echo "$fv not built" >&2; exit 1; }
fv_dtypes=fp32
if "$fv" bench --help 2>&1 | grep -q -- '--dtype'; then fv_dtypes="fp32 bf16"; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$out")"

for r in $(seq 1 "$runs"); do
  for dt in $fv_dtypes; do
    echo "== run $r/$runs: fastvar $dt" >&2
    extra=()
    [ "$dt" = fp32 ] || extra=(--dtype "$dt")
    "$fv" bench --shape "d$depth" --modes full --runs 1 -t "$threads" "${extra[@]}" \
      --json "$tmp/fastvar_${dt}_$r.json" >&2
  done
  for dt in fp32 bf16; do
    echo "== run $r/$runs: torch $dt" >&2
    "$py" tools/bench/torch_var.py --depth "$depth" --runs 1 --threads "$threads" --dtype "$dt" \
      --json "$tmp/torch_${dt}_$r.json" >&2
  done
done

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
"$py" - "$tmp" "$out" "$runs" "$threads" "$depth" "$cpu" "$rev" "$fv_dtypes" <<'EOF'
import glob, json, statistics, sys
tmp, out, runs, threads, depth, cpu, rev, fv_dtypes = sys.argv[1:]
med = lambda xs: statistics.median(xs)
res = {}
for dt in fv_dtypes.split():
    rr = []
    for p in sorted(glob.glob(f"{tmp}/fastvar_{dt}_*.json")):
        m = json.load(open(p))[0]["modes"]["full"]  # scale_ms: one per scale, then the decoder
        rr.append({"transformer_s": sum(m["scale_ms"][:-1]) / 1e3, "decode_s": m["scale_ms"][-1] / 1e3,
                   "total_s": m["total_ms_median"] / 1e3, "peak_rss_mib": json.load(open(p))[0]["peak_rss_mib"]})
    res[f"fastvar_{dt}"] = rr
torch_version = None
for dt in ("fp32", "bf16"):
    rr = []
    for p in sorted(glob.glob(f"{tmp}/torch_{dt}_*.json")):
        j = json.load(open(p))
        torch_version = j["torch_version"]
        rr.append(dict(j["runs"][0], peak_rss_mib=j["peak_rss_mib"]))
    res[f"torch_{dt}"] = rr
keys = ("transformer_s", "decode_s", "total_s", "peak_rss_mib")
median = {e: {k: med([x[k] for x in rr]) for k in keys} for e, rr in res.items()}
fvs = [e for e in median if e.startswith("fastvar")]
ratios = {f"{t}/{f}": median[t]["total_s"] / median[f]["total_s"] for t in ("torch_fp32", "torch_bf16") for f in fvs}
doc = {"cpu": cpu, "threads": int(threads), "runs": int(runs), "depth": int(depth), "batch": 1,
       "git_head": rev, "torch_version": torch_version, "engines": res, "median": median,
       "ratio_total": ratios}
json.dump(doc, open(out, "w"), indent=1)
print(f"VAR-d{depth}, 256 px, batch 1, random weights; {cpu}, {threads} thread(s); median of {runs} interleaved "
      f"run(s); git HEAD {rev}, torch {torch_version}\n")
print("| engine | dtype | transformer s | decode s | total s | peak RSS MiB | "
      + " | ".join(f"total / {f.replace('_', ' ')}" for f in fvs) + " |")
print("|---|---|---:|---:|---:|---:|" + "---:|" * len(fvs))
for e, m in median.items():
    eng, dt = e.split("_")
    cols = " | ".join(f"{m['total_s'] / median[f]['total_s']:.2f}x" for f in fvs)
    print(f"| {eng} | {dt} | {m['transformer_s']:.2f} | {m['decode_s']:.2f} | {m['total_s']:.2f} | "
          f"{m['peak_rss_mib']:.0f} | {cols} |")
print(f"\n(JSON: {out})")
EOF
