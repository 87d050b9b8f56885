"""Export parity for every classifier family of the registry: each architecture taught briefly on digits at 32 px,
then `dpl export` to ONNX (checked in onnxruntime on the 445 test digits) and to TorchScript; a table of the
exporter used, max |logit difference| and top-1 of the checkpoint and of the export.

    python bench/export_parity.py [--epochs 2] [--arch NAME ...]

Target (issue 32): the export's top-1 equals the checkpoint's for every family (dpl's CNNs, CIFAR ResNets,
WideResNets, FitNets, torchvision's, three timm models).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DPL = str(Path(sys.executable).with_name("dpl"))
ARCHS = ["cnn-s", "cnn-m", "resnet20", "resnet8x4", "wrn-16-2", "fitnet-thin", "resnet18", "mobilenet_v3_small",
         "efficientnet_b0", "timm:resnet18", "timm:mobilenetv3_small_100", "timm:convnext_atto",
         "timm:vit_tiny_patch16_224:patch_size=4"]


def run(args: list[str]) -> str:
    out = subprocess.run([DPL, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    return out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--arch", action="append")
    a = parser.parse_args()
    rows, failed = [], 0
    print("| arch | format | exporter | max abs logit diff | top-1 agreement | top-1 checkpoint | top-1 export |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.arch or ARCHS:
            ckpt = Path(tmp) / f"{arch.replace(':', '_').replace('=', '')}.safetensors"
            try:
                run(["teach", "--data", "digits", "--resize", "32", "--arch", arch, "--epochs", str(a.epochs),
                     "--device", "cpu", "-o", str(ckpt)])
            except RuntimeError as e:
                print(f"| {arch} | - | teach failed: {e} | | | | |")
                failed += 1
                continue
            for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
                try:
                    r = json.loads(run(["export", str(ckpt), "-o", str(ckpt.with_suffix(suffix)), "--format", fmt,
                                        "--json"]))
                except RuntimeError as e:
                    print(f"| {arch} | {fmt} | refused: {e} | | | | |")
                    failed += 1
                    continue
                p = r["parity"]
                rows.append(p)
                failed += p["top1_export"] != p["top1_checkpoint"]
                print(f"| {arch} | {fmt} | {r['exporter']} | {p['max_abs_diff']:.2g} | {p['top1_agreement']:.4f} | "
                      f"{p['top1_checkpoint']:.4f} | {p['top1_export']:.4f} |", flush=True)
    worst = max((p["max_abs_diff"] for p in rows), default=float("nan"))
    print(f"SUMMARY {len(rows)} exports, {failed} failed or with another top-1; largest |logit difference| {worst:.2g}")


if __name__ == "__main__":
    main()
