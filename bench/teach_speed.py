"""`dpl teach` epoch time against a plain hand-written PyTorch loop: same model, data, batch size, optimizer,
no augmentation. Rounds alternate between the two in one process; the summary is the ratio of medians.
With --workers N, a third side: dpl teach with the batches gathered by N DataLoader workers from host memory.

    .venv/bin/python bench/teach_speed.py [--data fashion-mnist --per-class 1000 --arch cnn-m --rounds 3 --workers 2]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dpl.core import data, models
from timing import epoch_times
from dpl.core.methods.common import ModelOptions, NoiseOptions
from dpl.core.methods.teach import teach
from dpl.core.engine.train import TrainConfig, runtime


def hand_written(ds, arch, epochs, batch_size, lr, rt) -> list[float]:
    torch.manual_seed(0)
    c, h, _ = ds.shape
    model = models.build(models.arch_spec(arch, num_classes=ds.num_classes, in_channels=c, image_size=h)).to(rt.device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    mean, std = ds.normalization
    mean = torch.tensor(mean, device=rt.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=rt.device).view(1, -1, 1, 1)
    images, labels = ds.images.to(rt.device), ds.labels.to(rt.device)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(ds), device=rt.device)
        for i in range(0, len(ds) - batch_size + 1, batch_size):
            idx = order[i: i + batch_size]
            x = (images[idx].float() / 255 - mean) / std
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if rt.cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def with_dpl(ds, arch, epochs, batch_size, lr, rt) -> list[float]:
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=0)
    return epoch_times(lambda p: teach(ds, None, ModelOptions(arch=arch), NoiseOptions(crop=False, flip=False), cfg, rt,
                                       on_progress=p), rt)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--per-class", type=int, default=1000, help="labeled samples per class to train on")
    ap.add_argument("--arch", default="cnn-m")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per round (the first of each round is dropped)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0, help="also time dpl teach with this many loader workers")
    args = ap.parse_args()
    rt = runtime(args.device)
    ds = data.load(args.data, partition=data.Partition(labeled_per_class=args.per_class), part="labeled")
    print(f"{args.arch} on {ds.spec} ({len(ds)} samples), batch {args.batch_size}, {rt.device}, "
          f"{torch.get_num_threads()} threads")
    hand, ours, loaded = [], [], []
    for r in range(args.rounds):
        h = hand_written(ds, args.arch, args.epochs + 1, args.batch_size, 0.05, rt)[1:]
        d = with_dpl(ds, args.arch, args.epochs + 1, args.batch_size, 0.05, rt)[1:]
        hand += h
        ours += d
        line = f"round {r + 1}: hand-written {statistics.median(h):.2f} s/epoch, dpl teach {statistics.median(d):.2f} s/epoch"
        if args.workers:
            w = with_dpl(ds, args.arch, args.epochs + 1, args.batch_size, 0.05, runtime(args.device, workers=args.workers))[1:]
            loaded += w
            line += f", with {args.workers} loader workers {statistics.median(w):.2f} s/epoch"
        print(line)
    ratio = statistics.median(ours) / statistics.median(hand)
    summary = (f"SUMMARY teach_speed: dpl teach / hand-written epoch time = {ratio:.3f} (target <= 1.10); "
               f"median {statistics.median(ours):.2f} s vs {statistics.median(hand):.2f} s")
    if loaded:
        summary += f"; --workers {args.workers} / on-device = {statistics.median(loaded) / statistics.median(ours):.3f}"
    print(summary)


if __name__ == "__main__":
    main()
