#!/usr/bin/env bash
# Contrastive pretraining for pose (PeCLR, Spurr et al., ICCV'21) beside plain SimCLR and a random init: cnn-m
# backbones pretrained on the unlabeled figures of poses (their keypoints unused), then keypoint models taught from
# each on 1 % (LABELED=20 of 2000) and 10 % (200) of the figures' keypoints, the same steps for every init. PeCLR's
# views are a known rotation, zoom, shift and flip of the figure, undone on the projection (read as 2-D points)
# before NT-Xent: meant to keep where things are, which SimCLR's invariance to geometry throws away.
#
#   recipes/pose-pretrain/run.sh                       # SEEDS="0 1", OUT=recipes/pose-pretrain/out-pose-pretrain
#   SEEDS=0 PRE_EPOCHS=4 recipes/pose-pretrain/run.sh  # a quicker look
#
# Outputs that exist are kept (delete OUT, or a file of it, to redo it). Prints the table of PCK@0.1 and OKS AP on
# the test figures, mean over SEEDS, and writes it to OUT/summary.txt. docs/results.md has the measured table and
# the command that made it: on 2 CPU cores, an hour, and no gain over random init at this budget (8 pretraining
# epochs); PRE_EPOCHS=100 DEVICE=cuda is the run a GPU can give.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
VENV=$HERE/../../.venv/bin
DPL=${DPL:-$(if [ -x "$VENV/dpl" ]; then echo "$VENV/dpl"; else echo dpl; fi)}
PYTHON=${PYTHON:-$(if [ -x "$VENV/python" ]; then echo "$VENV/python"; else echo python3; fi)}
POSES=${POSES:---data poses --poses 2000 --test-poses 500 --canvas 64}
ARCH=${ARCH:-cnn-m}
PRE_EPOCHS=${PRE_EPOCHS:-8}
PRE_OPT=${PRE_OPT:---batch-size 128 --lr 0.05}
SIMCLR_OPTS=${SIMCLR_OPTS:-}
PECLR_OPTS=${PECLR_OPTS:---view-rotation 45 --view-scale 0.8,1.25 --view-translate 0.1}
LABELED=${LABELED:-20 200}
# teach epochs per labeled count: 200 steps each (20 images: one step an epoch; 200 at 64 a batch: four)
EPOCHS_20=${EPOCHS_20:-200}
EPOCHS_200=${EPOCHS_200:-50}
OPT=${OPT:---optimizer adamw --lr 0.002 --weight-decay 1e-4 --batch-size 64}
SEEDS=${SEEDS:-0 1}
DEVICE=${DEVICE:-auto}
OUT=${OUT:-$HERE/out-pose-pretrain}

mkdir -p "$OUT"
# make's rule: an output that exists is not made again
made() { [ -s "$1" ] && echo "kept $1" >&2; [ -s "$1" ]; }
timed() { local start=$SECONDS; "$@"; echo "$(( SECONDS - start )) s: ${*: -1}" >> "$OUT/seconds.txt"; }

for task in simclr peclr; do
  out=$OUT/$task.safetensors
  opts=SIMCLR_OPTS; [ $task = peclr ] && opts=PECLR_OPTS
  made "$out" || timed "$DPL" pretrain --task $task $POSES --arch "$ARCH" --epochs "$PRE_EPOCHS" $PRE_OPT ${!opts} \
    --device "$DEVICE" --force -o "$out"
done

models=()
for n in $LABELED; do
  epochs=EPOCHS_$n
  for init in random simclr peclr; do
    from=(); [ $init != random ] && from=(--init "$OUT/$init.safetensors")
    for seed in $SEEDS; do
      out=$OUT/kp-$n-$init-seed$seed.safetensors
      models+=("$out")
      made "$out" || timed "$DPL" teach $POSES --labeled "$n" --arch "$ARCH" --epochs "${!epochs}" $OPT "${from[@]}" \
        --seed "$seed" --device "$DEVICE" --force -o "$out"
    done
  done
done

"$DPL" eval "${models[@]}" --device "$DEVICE" --json > "$OUT/eval.json"
"$PYTHON" - "$OUT/eval.json" > "$OUT/summary.txt" <<'EOF'
"""PCK@0.1 (all keypoints and by part) and OKS AP of each (labeled, init), mean over seeds, from dpl eval --json."""
import json
import re
import statistics
import sys

rows = {}
for r in json.load(open(sys.argv[1])):
    n, init = re.search(r"kp-(\d+)-(\w+)-seed\d+", r["checkpoint"]).groups()
    rows.setdefault((int(n), init), []).append(r)
print(f"{'labels':>7} {'init':<7} {'seeds':>5} {'PCK@0.1':>8} {'± std':>6} {'body':>6} {'hands':>6} {'face':>6} "
      f"{'AP':>6} {'vs random':>9}")
INITS = ["random", "simclr", "peclr"]
for (n, init), runs in sorted(rows.items(), key=lambda row: (row[0][0], INITS.index(row[0][1]))):
    pck = [r["pck"] for r in runs]
    mean = lambda k: statistics.mean(r[k] for r in runs)     # noqa: E731
    base = statistics.mean(r["pck"] for r in rows.get((n, "random"), runs))
    std = statistics.stdev(pck) if len(pck) > 1 else 0.0
    print(f"{n:>7} {init:<7} {len(runs):>5} {100 * mean('pck'):>8.1f} {100 * std:>6.1f} {100 * mean('pck_body'):>6.1f} "
          f"{100 * mean('pck_hands'):>6.1f} {100 * mean('pck_face'):>6.1f} {100 * mean('ap'):>6.1f} "
          f"{100 * (mean('pck') - base):>+9.1f}")
EOF
cat "$OUT/summary.txt"
