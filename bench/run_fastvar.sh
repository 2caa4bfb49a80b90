#!/usr/bin/env bash
# FastVAR end-to-end benchmarks on random weights of the release shapes (built
# in memory by `fastvar bench`, nothing downloaded): full vs the default plan
# vs skip-last, side by side, interleaved, medians of RUNS (default 3).
# Results: bench/results/*.json. Needs ~13 GB RAM for d36, ~20 GB for the
# Infinity-2B full run at 1M.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-3}"
mkdir -p bench/results
./build/fastvar bench --shape d16 --runs "$runs" --json bench/results/var_d16_cpu.json
./build/fastvar bench --shape d36 --runs "$runs" --json bench/results/var_d36_cpu.json
./build/fastvar bench --shape infinity-2b --pn 1M --modes full,fastvar --runs 1 \
  --json bench/results/infinity2b_1M_cpu.json
