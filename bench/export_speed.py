"""Inference speed of exported models: onnxruntime (float32, and int8 after dynamic quantisation) vs dpl's own eager
inference (`torch.inference_mode`, the path of dpl label and eval), side by side in alternating rounds, for the
demo's student (cnn-m on digits, 8 px, trained a few epochs so that int8's accuracy change means something) and a
torchvision resnet18 at 224 px (random weights: speed only).

    python bench/export_speed.py [--rounds 3] [--threads 2]

Prints images/s of each runtime, the ratios to eager, and int8's top-1 change on digits:test.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dpl.core import artifacts, data, deploy, models
from dpl.core.data import augment

DPL = str(Path(sys.executable).with_name("dpl"))


def eager(model, meta):
    def run(x):
        with torch.inference_mode():
            return model(augment.to_input(x, meta["input"]["mean"], meta["input"]["std"])).numpy()
    return run


def onnx(path):
    exported = deploy.load_onnx(path)
    return lambda x: exported.logits(x)[0]


def throughput(run, images: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        run(images[i:i + batch])
    return len(images) / (time.perf_counter() - start)


def export_both(model, meta, example, folder: Path, name: str) -> tuple[Path, Path]:
    net = deploy.wrap(model, meta)
    info = deploy.describe(meta, Path(name), "", "onnx", False)
    fp32, int8 = folder / f"{name}.onnx", folder / f"{name}-int8.onnx"
    exporter = deploy.export_onnx(net, example.float() / 255, fp32, info)
    deploy.quantize_int8(fp32, int8)
    print(f"{name}: exported by the {exporter} exporter; {fp32.stat().st_size / 1e6:.1f} MB float32, "
          f"{int8.stat().st_size / 1e6:.1f} MB int8")
    return fp32, int8


def compare(name, runs: dict, images, batch, rounds) -> dict:
    speeds = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            run(images[:batch])                     # warm-up of this round
            speeds[k].append(throughput(run, images, batch))
    best = {k: max(v) for k, v in speeds.items()}
    cells = ", ".join(f"{k} {v:,.0f} images/s ({v / best['eager']:.2f}x)" for k, v in best.items())
    print(f"{name} (batch {batch}, best of {rounds}): {cells}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        student = folder / "student.safetensors"
        subprocess.run([DPL, "teach", "--data", "digits", "--arch", "cnn-m", "--epochs", "15", "--device", "cpu",
                        "-o", student], check=True, capture_output=True)
        ckpt = artifacts.load_checkpoint(student)
        model = ckpt.build_model().eval()
        test = data.load("digits:test")
        fp32, int8 = export_both(model, ckpt.meta, test.images[:2], folder, "cnn-m-digits")
        runs = {"eager": eager(model, ckpt.meta), "onnxruntime": onnx(fp32), "onnxruntime-int8": onnx(int8)}
        small = compare("cnn-m, digits 8 px", runs, test.images.repeat(20, 1, 1, 1), 256, a.rounds)
        top1 = {k: float((torch.from_numpy(np.concatenate([run(test.images[i:i + 256]) for i in
                                                            range(0, len(test), 256)])).argmax(1)
                          == test.labels).float().mean()) for k, run in runs.items()}
        print("cnn-m digits:test top-1: " + ", ".join(f"{k} {v:.4f}" for k, v in top1.items()))

        spec = models.arch_spec("resnet18", num_classes=1000, in_channels=3, image_size=224)
        big = models.build(spec).eval()
        meta = {"arch": spec, "input": artifacts.input_meta(3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                "classes": [str(i) for i in range(1000)]}
        images = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8)
        fp32, int8 = export_both(big, meta, images[:2], folder, "resnet18-224")
        large = compare("resnet18, 224 px", {"eager": eager(big, meta), "onnxruntime": onnx(fp32),
                                             "onnxruntime-int8": onnx(int8)}, images, 32, a.rounds)
    print(f"SUMMARY onnxruntime/eager: cnn-m digits {small['onnxruntime'] / small['eager']:.2f}x "
          f"(int8 {small['onnxruntime-int8'] / small['eager']:.2f}x, top-1 {top1['onnxruntime-int8']:.4f} vs "
          f"{top1['eager']:.4f}); resnet18 224 px {large['onnxruntime'] / large['eager']:.2f}x "
          f"(int8 {large['onnxruntime-int8'] / large['eager']:.2f}x)")


if __name__ == "__main__":
    main()
