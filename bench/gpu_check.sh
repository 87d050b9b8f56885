#!/usr/bin/env bash
# One prepared run of the GPU checks for a session lent a CUDA machine (device tool): puts dpl on the path
# there, then prints bench/gpu_check.py's figures and its SUMMARY line.
set -euo pipefail
cd "$(dirname "$0")/.."
# The device machine has torch but no package index: dpl is put on the path as a package, not pip-installed.
mkdir -p /tmp/pkg/dpl && touch /tmp/pkg/dpl/__init__.py
ln -sfn "$PWD/cli" /tmp/pkg/dpl/cli && ln -sfn "$PWD/core" /tmp/pkg/dpl/core
export PYTHONPATH=/tmp/pkg PYTHONUNBUFFERED=1
PY=python3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" bench/gpu_check.py
