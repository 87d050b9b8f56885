#!/usr/bin/env bash
# RepDistiller's CIFAR-100 table (resnet32x4 -> resnet8x4) through recipes/kd-zoo, beside the published figures.
# Needs a GPU and CIFAR-100 on disk (torchvision's layout under $DPL_DATA/cifar100, e.g. from a machine with
# internet: dpl teach --data cifar100 --download ...). It cannot run on the 2-core CPU of CI.
#   DPL_DATA=/data bash bench/kd_zoo_cifar100.sh [SEEDS]        # 240 epochs per model, as mdistiller
#   EPOCHS=30 bash bench/kd_zoo_cifar100.sh "1"                  # a shorter look
# mdistiller's budget: SGD, batch 64, lr 0.05, weight decay 5e-4, 240 epochs (dpl decays the lr by a cosine, not
# by 0.1 at epochs 150/180/210), tau 4; DKD alpha 1, beta 8, 20 warm-up epochs. The recipe weighs CE and KD 1:1
# (mdistiller's KD row uses 0.1:0.9), and runs each feature loss with CE and without KD, as RepDistiller's rows.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-1 2}
EPOCHS=${EPOCHS:-240}
root=${DPL_DATA:-$HOME/.cache/dpl}/cifar100
if [ ! -d "$root" ]; then
  echo "kd_zoo_cifar100: CIFAR-100 is not under $root (set DPL_DATA)" >&2
  exit 2
fi
OUT=${OUT:-bench/out-kd-zoo-cifar100}
make -C recipes/kd-zoo DATA=cifar100 TEACHER=resnet32x4 STUDENT=resnet8x4 TEACHER_EPOCHS="$EPOCHS" EPOCHS="$EPOCHS" \
  TAU=4 SEEDS="$SEEDS" TRAIN="--batch-size 64 --lr 0.05 --weight-decay 5e-4" OUT="$(pwd)/$OUT"
cat <<'TABLE'
Published (RepDistiller, Tian et al. ICLR 2020, Table 1; DKD, Zhao et al. CVPR 2022, Table 1), test top-1 %:
  teacher resnet32x4 79.42   student resnet8x4 72.50
  KD 73.33   FitNet 73.50   AT 73.44   SP 72.94   RKD 71.90   PKT 73.64   CRD 75.51   DKD 76.32
TABLE
