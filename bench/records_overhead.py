"""The cost of a run's records: `fit` with the metrics log (a record every --log-every steps and every epoch,
appended and flushed to OUT.metrics.jsonl) vs without any listener, side by side in alternating rounds; and,
reported apart, the cost of validating every epoch on a held-out set.

    python bench/records_overhead.py [--per-class 600] [--epochs 3] [--rounds 3] [--device auto] [--arch cnn-m]

Fashion-MNIST when installed (else digits), or `--data synthetic` (random 32x32 RGB, for a GPU machine
without datasets: bench/records_gpu.sh). Target: the log costs <= 1 % of the epoch time.
"""

import argparse
import statistics
import tempfile
import time

import torch
from pathlib import Path

from dpl.core import data
from dpl.core.reporting import records
from dpl.core.engine import train
from dpl.core.methods.common import ModelOptions, NoiseOptions, ValOptions
from dpl.core.methods.teach import teach
from dpl.core.engine.train import TrainConfig


def load(name: str, per_class: int) -> data.Dataset:
    """Fashion-MNIST's labeled part (digits where it is not installed), or random 32x32 RGB images."""
    if name == "synthetic":
        g = torch.Generator().manual_seed(0)
        n = per_class * 10
        return data.Dataset("synthetic", "train", torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                            torch.arange(n) % 10, [str(c) for c in range(10)])
    try:
        return data.load(name, partition=data.Partition(labeled_per_class=per_class), part="labeled")
    except Exception:
        return data.load("digits")


class Timed:
    """A sink that counts the seconds spent in it."""

    def __init__(self, sink):
        self.sink, self.seconds = sink, 0.0

    def __call__(self, event: dict) -> None:
        start = time.perf_counter()
        self.sink(event)
        self.seconds += time.perf_counter() - start


def epoch_seconds(ds, val, cfg, rt, arch, log_path: Path | None) -> tuple[float, float, float]:
    """Wall seconds of the whole run per epoch (everything the log writes included), the median validation
    seconds, and the seconds per epoch spent inside the log's writes."""
    sink = Timed(records.MetricsLog(log_path)) if log_path is not None else None
    start = time.perf_counter()
    result = teach(ds, None, ModelOptions(arch=arch), NoiseOptions(), cfg, rt, on_progress=sink,
                   val=val, val_opts=ValOptions())
    wall = (time.perf_counter() - start) / cfg.epochs
    return (wall, statistics.median(h.get("val_seconds", 0.0) for h in result.history),
            sink.seconds / cfg.epochs if sink else 0.0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--per-class", type=int, default=600)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--arch", default="cnn-m")
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist (digits where missing) or synthetic")
    args = p.parse_args()
    rt = train.runtime(args.device)
    ds = load(args.data, args.per_class)
    rest, val = data.hold_out(ds, data.Holdout(per_class=args.val_per_class))
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, log_every=10)
    train.seed_everything(0)
    print(f"{ds.spec} ({len(ds)} samples), {args.arch}, {rt.device}, {args.epochs} epochs x {args.rounds} rounds")
    bare, logged, validated, val_cost, in_log = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            bare.append(epoch_seconds(ds, None, cfg, rt, args.arch, None)[0])
            seconds, _, writes = epoch_seconds(ds, None, cfg, rt, args.arch, Path(tmp) / f"log{r}.jsonl")
            logged.append(seconds)
            in_log.append(writes / seconds)
            seconds, cost, _ = epoch_seconds(rest, val, cfg, rt, args.arch, Path(tmp) / f"val{r}.jsonl")
            validated.append(seconds)
            val_cost.append(cost)
            print(f"round {r + 1}: no log {bare[-1]:.3f} s/epoch, log {logged[-1]:.3f} "
                  f"({in_log[-1] * 100:.3f} % of it inside the log's writes), "
                  f"log + validation {validated[-1]:.3f} (validation {cost:.3f} s of it, {len(val)} samples)")
    ratio = statistics.median(logged) / statistics.median(bare)
    print(f"SUMMARY log / no log {ratio:.3f} ({(ratio - 1) * 100:+.1f} %; inside the log's writes "
          f"{statistics.median(in_log) * 100:.3f} % of the epoch); validation every epoch "
          f"{statistics.median(val_cost):.3f} s = {statistics.median(val_cost) / statistics.median(bare) * 100:.1f} % "
          f"of an epoch ({len(val)} held-out samples)")


if __name__ == "__main__":
    main()
