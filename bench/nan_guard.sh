#!/usr/bin/env bash
# One prepared GPU run (device tool): checks that the GPU NaN guard stops a run at the log interval after a
# non-finite loss, then times the guard (bench/nan_guard.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/device_env.sh
"$PY" - <<'PY'
import torch
from dpl.core import RunError, train
rt = train.runtime("cuda")
model = rt.prepare(torch.nn.Linear(4, 2))
calls = []
def objective(batch):
    calls.append(1)
    loss = model(torch.ones(8, 4, device=rt.device)).float().pow(2).mean()
    return {"mse": loss * (float("nan") if len(calls) == 25 else 1.0)}, {}
try:
    train.fit(model, objective, lambda e: iter(range(100)), 100, train.TrainConfig(epochs=1, batch_size=8), rt)
    print("NaN guard: NOT caught")
except RunError as e:
    print(f"NaN guard: caught after {len(calls)} steps: {e}")
PY
"$PY" bench/nan_guard.py --rounds 3 --steps 300
