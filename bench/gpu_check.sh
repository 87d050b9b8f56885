#!/usr/bin/env bash
# One prepared run of the GPU checks for a session lent a CUDA machine (device tool): puts dpl on the path
# there, then prints bench/gpu_check.py's figures and its SUMMARY line.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/device_env.sh
"$PY" bench/gpu_check.py
