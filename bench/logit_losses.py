"""The logit losses of `dpl distill --loss`, measured two ways (never run in CI):

speed  offline DKD from soft label shards vs `teach` of the same student, per-epoch time, alternating rounds on
       the same data, model and batch (no augmentation; target <= 1.05); offline KD and LSKD reported beside it.

    .venv/bin/python bench/logit_losses.py speed [--data fashion-mnist --per-class 600 --student cnn-s]

fp16   what float16 storage does to each loss: one batch of the samples a label folder covers, the loss of a
       student against (a) the live teacher's float32 probabilities (online), (b) the stored float16 ones
       re-tempered to tau (offline), and for lskd and mse (c) the teacher's exact logits (no floor). Prints the
       batch loss and the largest per-sample difference, and how many stored probabilities are 0 or subnormal.

    .venv/bin/python bench/logit_losses.py fp16 --teacher t0.safetensors --labels labels0/ [--student s.safetensors]
"""

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpl.core import artifacts, data, losses, models
from dpl.core.data import augment
from dpl.core.methods import label
from dpl.core.methods.distill import DistillOptions, Teachers, distill
from dpl.core.methods.common import ModelOptions, NoiseOptions
from dpl.core.methods.teach import teach
from dpl.core.engine.train import TrainConfig, runtime
from timing import epoch_times                                                 # noqa: E402

PLAIN = NoiseOptions(crop=False, flip=False)


def speed(args):
    rt = runtime(args.device)
    ds = data.load(args.data, partition=data.Partition(labeled_per_class=args.per_class), part="labeled")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, warmup_epochs=0)
    print(f"{ds.spec} ({len(ds)} samples), student {args.student}, batch {args.batch_size}, {rt.device}, "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        teacher_path = Path(tmp) / "teacher.safetensors"
        c, h, _ = ds.shape
        spec = models.arch_spec(args.student, num_classes=ds.num_classes, in_channels=c, image_size=h)
        mean, std = ds.normalization
        artifacts.save_checkpoint(teacher_path, models.build(spec), {
            "arch": spec, "num_classes": ds.num_classes, "classes": ds.classes,
            "input": artifacts.input_meta(c, h, mean, std), "parents": []})
        label.label([teacher_path], ds, label.LabelOptions(), rt, Path(tmp) / "labels")
        labels = artifacts.read_labels(Path(tmp) / "labels")
        student = ModelOptions(arch=args.student)
        times = {"teach": [], "kd": [], "dkd": [], "lskd": []}
        for r in range(args.rounds):
            times["teach"] += epoch_times(lambda p: teach(ds, None, student, PLAIN, cfg, rt, on_progress=p), rt)[1:]
            for loss in ("kd", "dkd", "lskd"):
                opts = DistillOptions(loss=loss, tau=4.0)
                times[loss] += epoch_times(lambda p: distill(None, ds, labels, [], student, PLAIN, opts, cfg, rt,
                                                             on_progress=p), rt)[1:]
            print(f"round {r + 1}: " + ", ".join(f"{k} {statistics.median(v):.3f} s/epoch" for k, v in times.items()))
    ratio = {k: statistics.median(times[k]) / statistics.median(times["teach"]) for k in ("kd", "dkd", "lskd")}
    print(f"SUMMARY logit_losses speed: offline DKD / teach = {ratio['dkd']:.3f} (target <= 1.05); "
          f"offline LSKD / teach = {ratio['lskd']:.3f}; offline KD / teach = {ratio['kd']:.3f}")


def exact_logit_loss(name: str, s: torch.Tensor, z: torch.Tensor, tau: float) -> torch.Tensor:
    """lskd and mse per sample from the teacher's own logits: no probabilities, no floor."""
    if name == "lskd":
        p = (losses.standardize(z) / tau).softmax(1)
        return torch.stack([losses.tempered_kl(losses.standardize(s[i:i + 1]), p[i:i + 1], tau) for i in range(len(s))])
    sc, zc = s - s.mean(1, keepdim=True), z - z.mean(1, keepdim=True)
    return (sc - zc).pow(2).mean(1)


def per_sample(name: str, s: torch.Tensor, p: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    fn = losses.LOGIT_LOSSES[name]
    return torch.stack([fn(s[i:i + 1], p[i:i + 1], target[i:i + 1], tau) for i in range(len(s))])


def fp16(args):
    rt = runtime("cpu")
    labels = artifacts.read_labels(Path(args.labels))
    teacher = artifacts.load_checkpoint(Path(args.teacher))
    made = labels.meta["data"]
    split = data.Partition(labeled_per_class=made.get("labeled_per_class"), labeled=made.get("labeled"),
                           seed=made.get("split_seed", 0))
    ds = data.load(made["spec"], partition=split, part=made.get("part", "all"))
    label.check_labels_fit(labels, ds)
    rows = torch.arange(min(args.batch, len(labels)))
    images = ds.images[labels.index[rows]]
    net = teacher.build_model().eval()
    with torch.no_grad():
        z = net(augment.to_input(images, teacher.input["mean"], teacher.input["std"])).float()
        if args.student:
            st = artifacts.load_checkpoint(Path(args.student))
            s = st.build_model().eval()(augment.to_input(images, st.input["mean"], st.input["std"])).float()
        else:
            s = torch.randn_like(z)
    stored = labels.probs[rows]
    print(f"{len(rows)} samples of {made['spec']} ({made.get('part')}), labels at tau {labels.meta['tau']:g}: "
          f"{(stored == 0).float().mean():.3%} of the stored probabilities are 0, "
          f"{((stored > 0) & (stored < torch.finfo(torch.float16).smallest_normal)).float().mean():.3%} subnormal; "
          f"teacher logit range (max - min) per sample: median {(z.max(1).values - z.min(1).values).median():.1f}")
    for tau in args.taus:
        online = Teachers([teacher], rt).probs(images, tau)
        offline = label.soft_targets(labels, rows, tau, hard=False)
        floored = label.soft_targets(replace(labels, probs=labels.probs.clamp_min(losses.FP16_SMALLEST)), rows, tau,
                                     hard=False)        # what distill gives the FULL_DISTRIBUTION losses
        target = offline.argmax(1)
        for name in losses.LOGIT_LOSSES:
            stored_targets = floored if name in losses.FULL_DISTRIBUTION else offline
            on, off = per_sample(name, s, online, target, tau), per_sample(name, s, stored_targets, target, tau)
            line = (f"tau {tau:g} {name:5s} online {on.mean():.5f}  offline {off.mean():.5f}  "
                    f"|batch diff| {abs(on.mean() - off.mean()):.2e}  max |sample diff| {(on - off).abs().max():.2e}")
            if name in losses.FULL_DISTRIBUTION:
                ex = exact_logit_loss(name, s, z, tau)
                line += (f"  exact {ex.mean():.5f}: |online - exact| {abs(on.mean() - ex.mean()):.2e} "
                         f"(max sample {(on - ex).abs().max():.2e}), |offline - exact| {abs(off.mean() - ex.mean()):.2e}")
            print(line)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="part", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--data", default="fashion-mnist")
    sp.add_argument("--per-class", type=int, default=600)
    sp.add_argument("--student", default="cnn-s")
    sp.add_argument("--batch-size", type=int, default=128)
    sp.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is dropped")
    sp.add_argument("--rounds", type=int, default=2)
    sp.add_argument("--device", default="auto")
    fp = sub.add_parser("fp16")
    fp.add_argument("--teacher", required=True)
    fp.add_argument("--labels", required=True)
    fp.add_argument("--student", help="a checkpoint whose logits play the student's (default: random logits)")
    fp.add_argument("--batch", type=int, default=256)
    fp.add_argument("--taus", type=float, nargs="+", default=[1.0, 4.0])
    args = ap.parse_args()
    speed(args) if args.part == "speed" else fp16(args)


if __name__ == "__main__":
    main()
