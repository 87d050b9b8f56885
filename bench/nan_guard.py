"""On CUDA: the cost of reading the loss on the host every step (the NaN guard before it moved to the log
interval), side by side with dpl's `fit` as it is (the loss read every `log_every` steps).

Both runs train the same model on the same synthetic 32x32 images held on the GPU, with the same schedule;
the "every step" run wraps the objective so that it calls bool(torch.isfinite(loss)) each step, which is
what `fit` did before. Small models are launch-bound, where a per-step sync costs the most.

    python bench/nan_guard.py [--archs resnet20,resnet56,resnet18] [--steps 300] [--rounds 3]
"""

import argparse
import statistics
import time

import torch

from dpl.core.data import augment
from dpl.core.engine import train
from dpl.core.methods.teach import supervised_objective
from dpl.core.engine.train import TrainConfig, fit


def timed(arch: str, steps: int, rt, every_step: bool, batch: int = 128) -> float:
    from dpl.core import models
    g = torch.Generator().manual_seed(0)
    n = steps * batch
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g).to(rt.device)
    torch.manual_seed(0)
    model = rt.prepare(models.build(models.arch_spec(arch, num_classes=10, in_channels=3, image_size=32)))
    meta = {"mean": [0.5] * 3, "std": [0.25] * 3}
    objective = supervised_objective(model, labels, meta, augment.Noise(), rt)
    if every_step:
        inner = objective

        def objective(batch):
            terms, stats = inner(batch)
            bool(torch.isfinite(sum(terms.values()).detach()))      # the host waits for the device here
            return terms, stats
    cfg = TrainConfig(epochs=1, batch_size=batch, warmup_epochs=0)
    feed = rt.place(images).shuffled(batch, 0)
    fit(model, objective, lambda e: (b for i, b in zip(range(20), feed(e))), 20, cfg, rt)   # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    fit(model, objective, feed, steps, cfg, rt)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--archs", default="resnet20,resnet56,resnet18")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rt = train.runtime("cuda")
    for arch in args.archs.split(","):
        lazy, eager = [], []
        for _ in range(args.rounds):
            eager.append(timed(arch, args.steps, rt, every_step=True))
            lazy.append(timed(arch, args.steps, rt, every_step=False))
        lz, eg = statistics.median(lazy), statistics.median(eager)
        print(f"{arch}: loss read every 10 steps {lz * 1e3:.2f} ms/step, every step {eg * 1e3:.2f} ms/step")
        print(f"SUMMARY {arch} every-step / every-10-steps step time: {eg / lz:.3f}")


if __name__ == "__main__":
    main()
