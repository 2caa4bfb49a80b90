#!/usr/bin/env bash
# The main job: install, build, and generate images with the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh
mkdir -p out
./build/fastvar generate \
  -m tests/data/golden/var_tiny_a/var_weights.safetensors \
  --vae tests/data/golden/var_tiny_a/vae_weights.safetensors \
  --class 1,2,3,4 -n 4 -s 0 -o out/tiny-grid.png
echo "wrote out/tiny-grid.png"
