#!/usr/bin/env bash
# The main job: install, build, and generate images with the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh
mkdir -p out
# The Fashion-MNIST VAR compiled into the binary: no -m/--vae needed.
./build/fastvar generate --class sneaker -n 16 -s 0 -o out/grid.png
echo "wrote out/grid.png"
