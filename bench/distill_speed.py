"""Side by side in one run, on the same data, model and batch size (no augmentation):

- offline `distill` from label shards vs `teach` of the same student, per-epoch time (target <= 1.15);
- online KD (live teacher) vs `teach`, per-epoch time, against its bound 1 + (teacher forward / student step) + 0.05,
  both terms timed bare on the same batches (a forward under inference_mode; forward, backward and SGD step);
- `label` throughput vs the bare `model(x)` forward under inference_mode (target >= 0.9);
- bytes per sample of top-10 soft labels for 10 and 1,000 classes (target <= 100).

    .venv/bin/python bench/distill_speed.py [--data fashion-mnist --per-class 2000 --student cnn-m --teacher cnn-m]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dpl.core import artifacts, data, models
from dpl.core.data import augment
from dpl.core.methods import label
from dpl.core.methods.distill import DistillOptions, distill
from dpl.core.methods.common import ModelOptions, NoiseOptions
from dpl.core.methods.teach import teach
from dpl.core.engine.train import TrainConfig, runtime
from timing import epoch_times

PLAIN = NoiseOptions(crop=False, flip=False)


def measured_epochs(run, rt) -> list[float]:
    return epoch_times(run, rt)[1:]   # the first epoch warms up


def bare_forward_throughput(ckpt, images, rt, batch_size) -> float:
    model = rt.prepare(ckpt.build_model()).eval()
    with torch.inference_mode():
        x_all = augment.to_input(images.to(rt.device), ckpt.input["mean"], ckpt.input["std"], rt.cuda)
        start = time.perf_counter()
        for i in range(0, len(x_all), batch_size):
            model(x_all[i: i + batch_size])
        if rt.cuda:
            torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def bare_seconds_per_batch(ckpt_path, student_arch, images, rt, batch_size, steps=30) -> tuple[float, float]:
    """(teacher forward, student training step) seconds per batch, hand-written, on the same batches."""
    ckpt = artifacts.load_checkpoint(ckpt_path)
    teacher = rt.prepare(ckpt.build_model()).eval()
    c, h, _ = images.shape[1:]
    student = rt.prepare(models.build(models.arch_spec(student_arch, num_classes=ckpt.num_classes, in_channels=c,
                                                       image_size=h))).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    batches = [augment.to_input(images[i: i + batch_size].to(rt.device), ckpt.input["mean"], ckpt.input["std"])
               for i in range(0, steps * batch_size, batch_size)]
    y = torch.zeros(batch_size, dtype=torch.long, device=rt.device)

    def timed(fn) -> float:
        fn(batches[0])                      # warm-up
        start = time.perf_counter()
        for x in batches[1:]:
            fn(x)
        if rt.cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / (len(batches) - 1)

    def forward(x):
        with torch.inference_mode():
            teacher(x)

    def step(x):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(student(x), y).backward()
        opt.step()

    return timed(forward), timed(step)


def label_throughput(ckpt_path, ds, rt, batch_size, folder) -> float:
    start = time.perf_counter()
    label.label([ckpt_path], ds, label.LabelOptions(batch_size=batch_size), rt, folder, replace=label.shard_files(folder))
    if rt.cuda:
        torch.cuda.synchronize()
    return len(ds) / (time.perf_counter() - start)


def bytes_per_sample(num_classes: int, n: int, folder: Path) -> float:
    probs = torch.randn(n, num_classes).softmax(1)
    opts = label.LabelOptions(mode="topk", topk=10, shard_size=50_000)
    meta = {"teachers": [], "data": {}, "tau": 1.0, "mode": "topk", "topk": opts.topk, "num_classes": num_classes,
            "classes": [str(c) for c in range(num_classes)], "total": n, "world": 1}
    out = folder / f"labels-{num_classes}"
    out.mkdir()
    label.write_shard(out, meta, rank=0, seq=0, rank_shards=1, tensors=label.shard_tensors(probs, 0, opts))
    return sum(f.stat().st_size for f in out.iterdir()) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--per-class", type=int, default=1000, help="samples per class in the timed set")
    ap.add_argument("--student", default="cnn-m")
    ap.add_argument("--teacher", default="cnn-m")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is dropped")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    rt = runtime(args.device)
    ds = data.load(args.data, partition=data.Partition(labeled_per_class=args.per_class), part="labeled")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, warmup_epochs=0)
    print(f"{ds.spec} ({len(ds)} samples), student {args.student}, teacher {args.teacher}, batch {args.batch_size}, "
          f"{rt.device}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher_path = tmp / "teacher.safetensors"
        c, h, _ = ds.shape
        spec = models.arch_spec(args.teacher, num_classes=ds.num_classes, in_channels=c, image_size=h)
        mean, std = ds.normalization
        artifacts.save_checkpoint(teacher_path, models.build(spec), {
            "arch": spec, "num_classes": ds.num_classes, "classes": ds.classes,
            "input": artifacts.input_meta(c, h, mean, std), "parents": []})
        labels_dir = tmp / "labels"
        label.label([teacher_path], ds, label.LabelOptions(), rt, labels_dir)
        labels = artifacts.read_labels(labels_dir)
        student = ModelOptions(arch=args.student)

        teach_t, offline_t, online_t = [], [], []
        for r in range(args.rounds):
            teach_t += measured_epochs(lambda p: teach(ds, None, student, PLAIN, cfg, rt, on_progress=p), rt)
            offline_t += measured_epochs(lambda p: distill(None, ds, labels, [], student, PLAIN, DistillOptions(), cfg, rt,
                                                      on_progress=p), rt)
            online_t += measured_epochs(lambda p: distill(ds, None, None, [teacher_path], student, PLAIN,
                                                     DistillOptions(tau=4.0), cfg, rt, on_progress=p), rt)
            print(f"round {r + 1}: teach {statistics.median(teach_t):.2f} s/epoch, offline distill "
                  f"{statistics.median(offline_t):.2f}, online KD {statistics.median(online_t):.2f}")
        bare, lab = [], []
        ckpt = artifacts.load_checkpoint(teacher_path)
        for _ in range(args.rounds + 1):
            bare.append(bare_forward_throughput(ckpt, ds.images, rt, 512))
            lab.append(label_throughput(teacher_path, ds, rt, 512, tmp / "timed-labels"))
        sizes = {c: bytes_per_sample(c, 20_000, tmp) for c in (10, 1000)}
        terms = [bare_seconds_per_batch(teacher_path, args.student, ds.images, rt, args.batch_size)
                 for _ in range(args.rounds)]
        fwd, step = statistics.median(t[0] for t in terms), statistics.median(t[1] for t in terms)

    offline = statistics.median(offline_t) / statistics.median(teach_t)
    online = statistics.median(online_t) / statistics.median(teach_t)
    throughput = statistics.median(lab) / statistics.median(bare)
    bound = 1 + fwd / step + 0.05
    print(f"teacher forward {1000 * fwd:.1f} ms/batch, student step {1000 * step:.1f} ms/batch: online KD / teach bound "
          f"1 + {fwd / step:.3f} + 0.05 = {bound:.3f}, measured {online:.3f}")
    print(f"label {statistics.median(lab):.0f} samples/s vs bare forward {statistics.median(bare):.0f} samples/s")
    print(f"top-10 soft labels: {sizes[10]:.1f} bytes/sample at 10 classes, {sizes[1000]:.1f} at 1,000 classes")
    print(f"SUMMARY distill_speed: offline distill / teach = {offline:.3f} (target <= 1.15); "
          f"online KD / teach = {online:.3f} (bound {bound:.3f}); label / bare forward = {throughput:.3f} (target >= 0.9); "
          f"top-10 bytes/sample {sizes[10]:.1f} (10 classes), {sizes[1000]:.1f} (1,000) (target <= 100)")


if __name__ == "__main__":
    main()
