"""dpl predict vs dpl label over the same folder of PNG files (Fashion-MNIST's 60,000 training images written as
28 px PNGs; digits tiled where Fashion-MNIST is absent), whole commands alternated, images/s from wall time; and
dpl predict of the teacher's ONNX export (onnxruntime) beside them.

    python bench/predict_speed.py [--images 60000] [--rounds 2]

Target (issue 32): predict's images/s within 1.2x of label's, i.e. label / predict time <= 1.2.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dpl.core import data

DPL = str(Path(sys.executable).with_name("dpl"))


def write_pngs(folder: Path, n: int) -> str:
    try:
        ds, source = data.load("fashion-mnist"), "fashion-mnist"
    except Exception:      # noqa: BLE001  no Fashion-MNIST here: digits, tiled
        ds, source = data.load("digits", resize=28), "digits"
    pixels = ds.images[:, 0].numpy()
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(pixels[i % len(pixels)]).save(folder / f"{i:06d}.png")
    return source


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run([DPL, *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"dpl {' '.join(args)} failed:\n{out.stderr}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=2)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        source = write_pngs(root / "pngs", a.images)
        print(f"wrote {a.images:,} PNG files of {source} in {time.perf_counter() - start:.0f} s")
        teacher, onnx = root / "t.safetensors", root / "t.onnx"
        subprocess.run([DPL, "teach", "--data", source, "--arch", "cnn-s", "--epochs", "1", "--resize", "28",
                        "-o", teacher], check=True, capture_output=True)
        subprocess.run([DPL, "export", str(teacher), "-o", str(onnx)], check=True, capture_output=True)
        spec = f"imagefolder:{root / 'pngs'}"
        commands = {"label": ["label", str(teacher), "--data", spec, "-o", str(root / "labels"), "--force"],
                    "predict": ["predict", str(teacher), "--data", spec, "-o", str(root / "p.csv"), "--force"],
                    "predict-onnx": ["predict", str(onnx), "--data", spec, "-o", str(root / "q.csv"), "--force"]}
        seconds = {k: [] for k in commands}
        for r in range(a.rounds):
            for k, args in commands.items():
                seconds[k].append(timed(args))
                print(f"round {r}: {k} {seconds[k][-1]:.1f} s ({a.images / seconds[k][-1]:,.0f} images/s)")
        best = {k: min(v) for k, v in seconds.items()}
    ratio = best["predict"] / best["label"]
    print(f"SUMMARY predict/label time {ratio:.2f} (target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'}); "
          f"images/s label {a.images / best['label']:,.0f}, predict {a.images / best['predict']:,.0f}, "
          f"predict with onnxruntime {a.images / best['predict-onnx']:,.0f}")


if __name__ == "__main__":
    main()
