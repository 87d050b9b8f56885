"""A distillation sweep: one teacher (resnet56, Fashion-MNIST at 32 px) into three students, dpl against torchdistill.

    dpl           label once with --views K (the teacher's forward on K stored crops and flips per image), then
                  three offline distills that replay them (the teacher never runs again)
    torchdistill  1.1.5, three online KD runs (the teacher's forward at every step), bench/torchdistill_kd.py in its
                  own venv (made here on first use: pip install torchdistill==1.1.5 beside this machine's torch)
    dpl online    the same three students by `dpl distill --teacher`: the accuracy each offline student is held to

All on the same images: N per class of Fashion-MNIST's training split (dpl's stratified partition, split seed 0) and
its 10,000 test images, written once as PNG files (imagefolder:WORK/fm), which dpl decodes at --resize 32 and
torchvision's ImageFolder reads for torchdistill; crop after padding by 4 and flip for every student; the same nets
(dpl's registry, built inside torchdistill's venv) and the same teacher weights; CE + alpha * tau^2 * KL, SGD with
momentum 0.9, weight decay 5e-4, a cosine schedule per step. Then the consistency table: resnet20 at the first tau
from labels with views, from labels of un-augmented images, and online, over --seeds.

    python bench/kd_sweep.py [--per-class 500] [--epochs 4] [--views 4] [--seeds 2] [--work /tmp/dpl-kd-sweep]

Ends with a SUMMARY line: torchdistill's total wall time / dpl's (label + distills), the target ≥ 1.7.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DPL = str(Path(sys.executable).with_name("dpl"))
STUDENTS = [("resnet20", 4.0), ("resnet20", 2.0), ("cnn-m", 4.0)]
ALPHA = 0.9


def run(cmd: list[str], **kw) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t, done.stdout


def export_images(root: Path, per_class: int) -> None:
    """N per class of the training split (dpl's partition) and the whole test split, as PNG class folders."""
    if (root / "done").exists():
        return
    from PIL import Image

    from dpl.core import data
    from dpl.core.data import partition

    train, test = data.load("fashion-mnist"), data.load("fashion-mnist:test")
    rows = partition.labeled_indices(train.labels, train.num_classes, data.Partition(labeled_per_class=per_class))
    for split, ds, idx in (("train", train, rows), ("test", test, range(len(test)))):
        for i in idx:
            i = int(i)
            folder = root / split / ds.classes[int(ds.labels[i])].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.images[i, 0].numpy()).save(folder / f"{i:05d}.png")
    (root / "done").write_text("")


def torchdistill_python(venv: Path) -> str:
    """torchdistill 1.1.5 in a venv of its own, with this machine's torch and dpl (for its nets) without deps."""
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        import torch
        import torchvision

        pins = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins, "torchdistill==1.1.5", "safetensors"],
                       check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(REPO)], check=True)
        (venv / ".ready").write_text("")
    return str(python)


def top1(ckpt: Path) -> float:
    meta = json.loads(subprocess.run([DPL, "info", str(ckpt), "--json"], capture_output=True, text=True).stdout)
    return meta["metadata"]["metrics"]["test_top1"] if "metadata" in meta else meta["metrics"]["test_top1"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--td-workers", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/dpl-kd-sweep"))
    p.add_argument("--td-venv", type=Path, default=Path.home() / ".cache" / "dpl-bench" / "torchdistill-venv")
    args = p.parse_args()
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    fm = w / "fm"
    export_images(fm, args.per_class)
    td = torchdistill_python(args.td_venv)
    data = ["--data", f"imagefolder:{fm}", "--resize", "32"]
    common = ["--epochs", args.epochs, "--batch-size", 128, "--lr", 0.05, "--alpha", ALPHA]

    teacher = w / "teacher.safetensors"
    if not teacher.exists():
        secs, _ = run([DPL, "teach", *data, "--arch", "resnet56", "--epochs", args.teacher_epochs, "-o", teacher])
        print(f"teacher resnet56: {args.teacher_epochs} epochs in {secs:.0f} s, test top-1 {top1(teacher):.4f}")

    def dpl_student(arch, tau, seed, source, name):
        out = w / f"{name}.safetensors"
        secs, _ = run([DPL, "distill", *source, "--arch", arch, "--tau", tau, "--seed", seed, *common, "-o", out,
                       "--force"])
        return secs, top1(out)

    def td_student(arch, tau, seed):
        secs, out = run([td, str(REPO / "bench" / "torchdistill_kd.py"), "--teacher", teacher, "--student", arch,
                         "--tau", tau, "--alpha", ALPHA, "--epochs", args.epochs, "--seed", seed, "--workers",
                         args.td_workers, "--imagefolder", fm])
        return secs, json.loads(out.strip().splitlines()[-1])["top1"]

    # labeled at the largest tau of the sweep: a lower one re-tempers down exactly, while float16 probabilities made at
    # tau 1 lose the smallest ones to underflow when raised to tau 4 (dpl distill says how many)
    label_tau = ["--tau", max(t for _, t in STUDENTS)]
    views = w / "labels-views"
    label_s, _ = run([DPL, "label", teacher, *data, *label_tau, "--views", args.views, "-o", views, "--force"])
    seeds = range(args.seeds)
    rows = []
    for arch, tau in STUDENTS:
        name = f"{arch}-t{tau:g}"
        offline = [dpl_student(arch, tau, s, ["--labels", views], f"views-{name}-s{s}") for s in seeds]
        theirs = td_student(arch, tau, 0)
        online = [dpl_student(arch, tau, s, ["--teacher", teacher, *data], f"online-{name}-s{s}") for s in seeds]
        rows.append((name, offline, theirs, online))
        print(f"{name}: dpl views {offline[0][0]:.0f} s top-1 {[round(t, 4) for _, t in offline]} | torchdistill "
              f"{theirs[0]:.0f} s {theirs[1]:.4f} | dpl online {online[0][0]:.0f} s {[round(t, 4) for _, t in online]}",
              flush=True)
    dpl_total = label_s + sum(r[1][0][0] for r in rows)
    td_total = sum(r[2][0] for r in rows)
    online_total = sum(r[3][0][0] for r in rows)
    print(f"\nseed 0 wall times: label --views {args.views} {label_s:.0f} s; dpl sweep (label + 3 distills) "
          f"{dpl_total:.0f} s; torchdistill {td_total:.0f} s; dpl online {online_total:.0f} s")
    mean = lambda runs: statistics.mean(t for _, t in runs)    # noqa: E731
    print(f"| student | dpl views top-1 | dpl online top-1 | views − online | torchdistill top-1 (seed 0) |  "
          f"(mean of {args.seeds} seeds)")
    print("|---|---|---|---|---|")
    for name, offline, theirs, online in rows:
        print(f"| {name} | {mean(offline):.4f} | {mean(online):.4f} | {100 * (mean(offline) - mean(online)):+.2f} pt | "
              f"{theirs[1]:.4f} |")

    # consistency: the first student from view labels, from labels of un-augmented images, online
    arch, tau = STUDENTS[0]
    plain = w / "labels-plain"
    plain_s, _ = run([DPL, "label", teacher, *data, *label_tau, "-o", plain, "--force"])
    table = {"views": [t for _, t in rows[0][1]],
             "plain": [dpl_student(arch, tau, s, ["--labels", plain], f"plain-{arch}-s{s}")[1] for s in seeds],
             "online": [t for _, t in rows[0][3]]}
    print(f"\n{arch} tau {tau:g}, {args.epochs} epochs, mean ± std over {args.seeds} seeds (label without views: "
          f"{plain_s:.0f} s)")
    for key, values in table.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {key:7s} {statistics.mean(values):.4f} ± {sd:.4f}  {[round(v, 4) for v in values]}")
    print(f"SUMMARY torchdistill/dpl sweep wall time {td_total / dpl_total:.2f} (target >= 1.7); dpl online/dpl sweep "
          f"{online_total / dpl_total:.2f}; label {label_s:.0f} s of dpl's {dpl_total:.0f} s")


if __name__ == "__main__":
    main()
