"""The cost of --ema: `dpl teach`'s epoch time with and without the EMA of the weights, side by side in
alternating rounds, and the EMA update alone (one `torch._foreach_lerp_` over the model's floating tensors)
timed against the epoch's step count.

    python bench/ema_overhead.py [--per-class 600] [--epochs 2] [--rounds 3] [--arch cnn-m] [--device auto]

Fashion-MNIST's labeled part (600 per class: 6,000 samples) when installed, else digits.
"""

import argparse
import statistics
import time

import torch

from dpl.core import data, models
from dpl.core.engine import train
from dpl.core.methods.common import ModelOptions, NoiseOptions
from dpl.core.methods.teach import teach


def load(per_class: int) -> data.Dataset:
    try:
        return data.load("fashion-mnist", partition=data.Partition(labeled_per_class=per_class), part="labeled")
    except Exception:
        return data.load("digits")


def epoch_seconds(ds, cfg, rt, arch) -> tuple[float, float]:
    """Median wall seconds of an epoch's steps (the history's `seconds`, EMA updates included), and the process's
    CPU seconds per epoch of the whole run (steadier than wall time on a shared machine)."""
    cpu = time.process_time()
    result = teach(ds, None, ModelOptions(arch=arch), NoiseOptions(), cfg, rt)
    return statistics.median(h["seconds"] for h in result.history), (time.process_time() - cpu) / cfg.epochs


def update_seconds(ds, arch, rt, repeats=50, batches=5) -> float:
    """Seconds of one EMA update of this model (the median of `batches` timings of `repeats` updates)."""
    spec = models.arch_spec(arch, num_classes=ds.num_classes, in_channels=ds.shape[0], image_size=ds.shape[1])
    ema = train.Ema(rt.prepare(models.build(spec)), 0.999)
    for step in range(10):
        ema.update(step)
    timings = []
    for _ in range(batches):
        if rt.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for step in range(repeats):
            ema.update(step)
        if rt.cuda:
            torch.cuda.synchronize()
        timings.append((time.perf_counter() - start) / repeats)
    return statistics.median(timings)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--per-class", type=int, default=600)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--arch", default="cnn-m")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    rt = train.runtime(a.device)
    ds = load(a.per_class)
    base = train.TrainConfig(epochs=a.epochs, batch_size=a.batch_size)
    with_ema = train.TrainConfig(epochs=a.epochs, batch_size=a.batch_size, ema=0.999)
    plain, averaged = [], []
    for _ in range(a.rounds):
        plain.append(epoch_seconds(ds, base, rt, a.arch))
        averaged.append(epoch_seconds(ds, with_ema, rt, a.arch))
    steps = train.steps_per_epoch(len(ds), a.batch_size)
    update = update_seconds(ds, a.arch, rt)
    print(f"{ds.spec}: {len(ds)} samples, {a.arch}, batch {a.batch_size} ({steps} steps/epoch), {rt.device}, "
          f"{a.rounds} alternating rounds of {a.epochs} epochs")
    wall = [statistics.median(r[i] for r in runs) for runs in (plain, averaged) for i in (0, 1)]
    print(f"{'':<12}{'wall s/epoch':>14}{'CPU s/epoch':>14}   rounds (wall/CPU)")
    for name, runs, (w, c) in (("no --ema", plain, wall[:2]), ("--ema 0.999", averaged, wall[2:])):
        print(f"{name:<12}{w:>14.2f}{c:>14.2f}   " + "  ".join(f"{a:.2f}/{b:.2f}" for a, b in runs))
    print(f"ratio --ema/none: wall {wall[2] / wall[0]:.3f}, CPU {wall[3] / wall[1]:.3f}; one EMA update "
          f"{update * 1e3:.3f} ms x {steps} steps = {update * steps:.3f} s/epoch "
          f"({update * steps / wall[0] * 100:.2f} % of the plain epoch's wall time)")


if __name__ == "__main__":
    main()
