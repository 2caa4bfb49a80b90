#!/usr/bin/env bash
# fastvar.serve on Ray Serve (python/tests/test_serve_ray.py; a local
# `ray start --head`, loopback only, without Ray's token auth): ray[serve], the
# openai SDK, pytest, numpy and pillow from PyPI into a venv made here
# (build/venv-ray; idempotent), against the build tree's libfastvar.so.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=build/venv-ray
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import ray.serve, openai, pytest, numpy, PIL" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "ray[serve]" openai pytest numpy pillow
fi
export FASTVAR_LIBRARY="$PWD/build/libfastvar.so" FASTVAR_BIN="$PWD/build/fastvar" PYTHONPATH="$PWD/python" \
  RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled FASTVAR_RAY_RESULTS="${FASTVAR_RAY_RESULTS:-build/ray_load.json}"
trap '"$VENV/bin/ray" stop --force > /dev/null 2>&1 || true' EXIT
timeout 900 "$VENV/bin/python" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning -s python/tests/test_serve_ray.py "$@"
