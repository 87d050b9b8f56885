#!/usr/bin/env bash
# Fashion-MNIST, full labels, cnn-m: test accuracy and wall time of `dpl teach` on this machine.
#   bash bench/fashion_teach.sh [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-6}
OUT=$(mktemp -d)
SECONDS=0
.venv/bin/dpl teach --data fashion-mnist --arch cnn-m --epochs "$EPOCHS" -o "$OUT/fm.safetensors"
elapsed=$SECONDS
top1=$(.venv/bin/dpl eval "$OUT/fm.safetensors" --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["top1"])')
printf 'SUMMARY fashion_teach: cnn-m, %s epochs, test top1 %.4f (target >= 0.91), teach wall time %.0f s\n' \
  "$EPOCHS" "$top1" "$elapsed"
rm -rf "$OUT"
