#!/usr/bin/env bash
# The end-to-end tests of `fastvar serve` (tests/server/test_server.py) on
# loopback: the official openai SDK and prometheus_client come from PyPI into
# a venv made here (build/venv-server; idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=build/venv-server
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import openai, prometheus_client" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check openai prometheus_client
fi
FASTVAR_BIN="${FASTVAR_BIN:-build/fastvar}" timeout 900 "$VENV/bin/python" tests/server/test_server.py "$@"
