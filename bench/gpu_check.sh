#!/usr/bin/env bash
# One prepared run of the GPU checks for a session lent a CUDA machine (device tool): installs dpl into a
# venv there if needed, then prints bench/gpu_check.py's figures and its SUMMARY line.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import torch, torch.cuda; assert torch.cuda.is_available()' 2>/dev/null; then
  [ -x .venv-gpu/bin/python ] || python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install --quiet -e .
  PY=.venv-gpu/bin/python
else
  pip install --quiet --no-deps -e . && PY=python3
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" bench/gpu_check.py
