"""`dpl teach` with 2 gloo ranks against 1 rank on the CPU (torchrun), side by side: wall time of the whole
command and test accuracy. On a 2-core machine the speed-up is reported, not expected.

    .venv/bin/python bench/ddp_scaling.py [--data fashion-mnist --per-class 1000 --arch cnn-s --epochs 3]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def run(cmd, env) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--arch", default="cnn-s")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128, help="global batch: each of the 2 ranks takes half")
    args = ap.parse_args()
    teach = ["teach", "--data", args.data, "--labeled-per-class", str(args.per_class), "--arch", args.arch,
             "--epochs", str(args.epochs), "--device", "cpu", "--force"]
    with tempfile.TemporaryDirectory() as tmp:
        one, two = Path(tmp) / "one.safetensors", Path(tmp) / "two.safetensors"
        t1 = run([str(BIN / "dpl"), *teach, "--batch-size", str(args.batch_size), "-o", str(one)], os.environ)
        t2 = run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", str(BIN / "dpl"), *teach,
                  "--batch-size", str(args.batch_size // 2), "-o", str(two)], {**os.environ, "OMP_NUM_THREADS": "1"})
        acc = {}
        for name, path in (("1 rank", one), ("2 ranks", two)):
            out = subprocess.run([str(BIN / "dpl"), "eval", str(path), "--json"], check=True, capture_output=True, text=True)
            acc[name] = json.loads(out.stdout)["top1"]
    print(f"1 rank: {t1:.1f} s, top1 {acc['1 rank']:.4f};  2 gloo ranks: {t2:.1f} s, top1 {acc['2 ranks']:.4f}")
    print(f"SUMMARY ddp_scaling: 2-rank / 1-rank wall time = {t2 / t1:.3f} (speed-up {t1 / t2:.2f}x), "
          f"top1 {acc['2 ranks']:.4f} vs {acc['1 rank']:.4f}")


if __name__ == "__main__":
    main()
