#!/usr/bin/env bash
# Install, build and run every test: the GoogleTest suite under ctest (the
# models run on the CPU backend; the CUDA suites skip without a GPU, see
# scripts/gpu-check.sh), then each libFuzzer target for a short time on its
# seed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}" bash scripts/fuzz.sh
