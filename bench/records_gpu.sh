#!/usr/bin/env bash
# On a CUDA machine (device tool): the metrics log's overhead on the GPU, where the host reads the running
# means at the log interval. resnet20 and cnn-m on random 32x32 RGB images.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/device_env.sh
for arch in resnet20 cnn-m; do
  "$PY" bench/records_overhead.py --data synthetic --per-class 2000 --epochs 4 --rounds 3 --arch "$arch" --device cuda
done
