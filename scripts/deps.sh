#!/usr/bin/env bash
# Installs the Debian 12 packages fastvar.cpp needs (idempotent: apt runs only
# when something is missing). Run as root or with sudo available.
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config
      libopenblas-dev libdnnl-dev libhwy-dev nlohmann-json3-dev libcli11-dev libpng-dev libsentencepiece-dev libicu-dev
      libgtest-dev libbenchmark-dev libboost-dev
      python3-venv chromium
      clang libclang-rt-14-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
