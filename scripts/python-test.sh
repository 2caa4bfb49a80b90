#!/usr/bin/env bash
# Tests of the Python package (python/tests) against the build tree's
# libfastvar.so: pytest, numpy and pillow from PyPI into a venv made here
# (build/venv-python; idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=build/venv-python
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import pytest, numpy, PIL" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check pytest numpy pillow
fi
export FASTVAR_LIBRARY="$PWD/build/libfastvar.so" FASTVAR_BIN="$PWD/build/fastvar" PYTHONPATH="$PWD/python"
timeout 600 "$VENV/bin/python" -m pytest -q -p no:cacheprovider python/tests/test_fastvar.py "$@"
