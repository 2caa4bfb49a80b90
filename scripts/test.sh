#!/usr/bin/env bash
# Install, build and run every test: the GoogleTest suite under ctest (the
# models run on the CPU backend; the CUDA suites skip without a GPU, see
# scripts/gpu-check.sh), then each libFuzzer target for a short time on its
# seed corpus. The server's end-to-end tests (scripts/server-test.sh) run
# between the two.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"
bash scripts/server-test.sh  # fastvar serve end to end (openai SDK, load test) on loopback
bash scripts/python-test.sh  # the Python package on build/libfastvar.so
bash scripts/ray-test.sh     # the Python package on Ray Serve (two local replicas)
FUZZ_SECONDS="${FUZZ_SECONDS:-30}" bash scripts/fuzz.sh
