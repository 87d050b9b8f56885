"""Cost of writing a resume state every epoch: `teach` epoch time with and without it, side by side.

    .venv/bin/python bench/resume_overhead.py [--data fashion-mnist --arch cnn-m --per-class 6000 --epochs 3]
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from dpl.core import data
from dpl.core.methods.common import ModelOptions, NoiseOptions
from dpl.core.methods.teach import teach
from dpl.core.engine.train import ResumeSpec, TrainConfig, runtime
from timing import epoch_times


def measured_epochs(ds, arch, cfg, rt, resume) -> list[float]:
    run = lambda p: teach(ds, None, ModelOptions(arch=arch), NoiseOptions(crop=False, flip=False), cfg, rt,
                          on_progress=p, resume=resume)
    return epoch_times(run, rt)[1:]     # the first epoch warms up


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--per-class", type=int, default=6000, help="6000: all of Fashion-MNIST's training split")
    ap.add_argument("--arch", default="cnn-m")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    rt = runtime("auto")
    ds = data.load(args.data, partition=data.Partition(labeled_per_class=args.per_class), part="labeled")
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, warmup_epochs=0)
    plain, saving = [], []
    with tempfile.TemporaryDirectory() as tmp:
        spec = ResumeSpec(Path(tmp) / "out.safetensors.resume", {"bench": True}, every=1)
        for r in range(args.rounds):
            plain += measured_epochs(ds, args.arch, cfg, rt, None)
            saving += measured_epochs(ds, args.arch, cfg, rt, spec)
            print(f"round {r + 1}: {statistics.median(plain):.2f} s/epoch plain, {statistics.median(saving):.2f} with a resume state each epoch")
    overhead = statistics.median(saving) / statistics.median(plain) - 1
    print(f"SUMMARY resume_overhead: {100 * overhead:+.1f} % of epoch time for a resume state each epoch "
          f"({args.arch}, {len(ds)} samples; target <= 3 %)")


if __name__ == "__main__":
    main()
