"""`dpl mil` training throughput, in bags per second, with a batch of 16 bags per step against one bag per step
(AttentionDeepMIL's way): the same bags, encoder, pooling and schedule; rounds alternate between the two in one
process; each round's first epoch (new tensor shapes) is dropped. The summary is the ratio of median bags/s.

    .venv/bin/python bench/mil_batching.py [--data fashion-mnist --bags 200 --bag-size 10 --arch cnn-s --rounds 3]
"""

import argparse
import statistics

import torch

from dpl.core.data import bags
from dpl.core import data
from dpl.core.methods.mil import MilOptions, train_mil
from dpl.core.methods.common import ModelOptions, NoiseOptions
from dpl.core.engine.train import TrainConfig, runtime
from timing import epoch_times


def bags_per_second(train_bags, bag_batch: int, args, rt) -> list[float]:
    """Bags per second of each epoch but the first."""
    cfg = TrainConfig(epochs=args.epochs + 1, batch_size=bag_batch, lr=5e-4, optimizer="adamw", warmup_epochs=0)
    per_epoch = len(train_bags) // bag_batch * bag_batch
    times = epoch_times(lambda p: train_mil(train_bags, ModelOptions(arch=args.arch), NoiseOptions(), MilOptions(
        pooling=args.pooling), cfg, rt, on_progress=p), rt)[1:]
    return [per_epoch / t for t in times]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--bags", type=int, default=200)
    ap.add_argument("--bag-size", type=float, default=10.0)
    ap.add_argument("--arch", default="cnn-s")
    ap.add_argument("--pooling", default="attention")
    ap.add_argument("--batched", type=int, default=16, help="bags per step of the batched side")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per round (after a dropped first one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    rt = runtime(args.device)
    train_bags = bags.build(data.load(args.data), bags.BagSpec(target="0", bags=args.bags, size=args.bag_size), args.bags)
    print(f"{args.arch} {args.pooling} on {len(train_bags)} bags of {train_bags.spec} ({int(train_bags.sizes.sum())} "
          f"instances), {rt.device}, {torch.get_num_threads()} threads")
    one, batched = [], []
    for r in range(args.rounds):
        o = bags_per_second(train_bags, 1, args, rt)
        b = bags_per_second(train_bags, args.batched, args, rt)
        one += o
        batched += b
        print(f"round {r + 1}: 1 bag per step {statistics.median(o):.1f} bags/s, {args.batched} bags per step "
              f"{statistics.median(b):.1f} bags/s")
    ratio = statistics.median(batched) / statistics.median(one)
    print(f"SUMMARY mil_batching: {args.batched} bags per step / 1 bag per step = {ratio:.2f}x bags/s (target >= 4); "
          f"median {statistics.median(batched):.1f} vs {statistics.median(one):.1f} bags/s")


if __name__ == "__main__":
    main()
