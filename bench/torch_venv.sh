# Sourced by bench/run_*_vs_torch.sh (from the repository root): fv, the built fastvar binary, and
# the PyTorch peers' interpreter. PYTHON=... names one to use;
# otherwise build/venv-torch is made once with today's torch, numpy, transformers and huggingface_hub
# from PyPI (everything any of the peers imports, so the scripts share one venv), and TORCH_PYTHON
# names its python.
fv=./build/fastvar
[ -x "$fv" ] || { echo "$fv not built (bash scripts/build.sh)" >&2; exit 1; }
if [ -n "${PYTHON:-}" ]; then
  TORCH_PYTHON="$PYTHON"
else
  TORCH_PYTHON=build/venv-torch/bin/python
  if [ ! -x "$TORCH_PYTHON" ] || ! "$TORCH_PYTHON" -c "import torch, numpy, transformers, huggingface_hub" 2>/dev/null; then
    echo "== making build/venv-torch with torch, numpy, transformers and huggingface_hub from PyPI" >&2
    python3 -m venv build/venv-torch
    build/venv-torch/bin/pip install -q torch numpy transformers huggingface_hub >&2
  fi
fi
