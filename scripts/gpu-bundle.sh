#!/usr/bin/env bash
# Builds the CUDA engine here (build-gpu, sm_90 for H100/H200 unless
# CUDA_ARCHS says otherwise) and packs the binaries with the shared libraries
# they need beyond glibc and the CUDA runtime into .devbundle/bundle.tar.xz, for
# a GPU machine that has the CUDA toolkit but none of our Debian -dev packages.
# scripts/gpu-check.sh unpacks it there. .devbundle/ is git-ignored via
# .git/info/exclude (this script adds the line).
#   bash scripts/gpu-bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
archs=${CUDA_ARCHS:-90}
# Without the embedded default model (11 MB in each binary): the bundle has to
# travel in a small tree, and the GPU checks use the golden folders' files.
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFASTVAR_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$archs" -DFASTVAR_MODELS_DIR="$(pwd)/build-gpu/no-models" > /dev/null
ninja -C build-gpu fastvar fastvar_tests fastvar_bench
grep -qx '/.devbundle/' .git/info/exclude 2>/dev/null || echo '/.devbundle/' >> .git/info/exclude
mkdir -p .devbundle
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
cp build-gpu/fastvar build-gpu/tests/fastvar_tests build-gpu/bench/fastvar_bench "$stage/bin/"
# The CUDA backend module, beside the binary that loads it.
cp build-gpu/libfastvar-cuda.so "$stage/bin/"
for f in "$stage"/bin/*; do ldd "$f"; done | awk '/=> \//{print $3}' | sort -u |
  grep -v -E '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libcublas[^/]*|libcudart)\.so' |
  xargs -I{} cp -L {} "$stage/lib/"
tar -C "$stage" -cf - bin lib | xz -T0 -3 > .devbundle/bundle.tar.xz
# The tests find their data and the CLI through paths compiled in: record them.
printf '%s\n' "$(pwd)" > .devbundle/source_dir
ls -la .devbundle
