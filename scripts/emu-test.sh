#!/usr/bin/env bash
# The CUDA engines (VAR and Infinity transformers, decoders, pipelines, the C
# API and CLI with --device cuda) on the emulated device of
# tests/cuda_emu/ (host memory, the CPU backend's ops), so that machines
# without a GPU test everything above the kernels: buffer sizes, strides, op
# order, FastVAR bookkeeping, against the golden tensors. The kernels
# themselves are tested on a GPU only (scripts/gpu-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-emu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFASTVAR_CUDA_EMU=ON -DFASTVAR_BENCH=OFF > /dev/null
cmake --build build-emu -j "$(nproc)" --target fastvar fastvar_tests
# Decode512ReleaseShape decodes with a release-size decoder: a minute here, and
# nothing the small golden decoders do not cover.
build-emu/tests/fastvar_tests --gtest_filter='Cuda*:-CudaVQVAE.Decode512ReleaseShape' --gtest_brief=1
