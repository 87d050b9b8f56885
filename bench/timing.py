"""Per-epoch wall times of a dpl training run, read off the progress events of the one training loop."""

import time

import torch


def epoch_times(run, rt) -> list[float]:
    """`run(on_progress)` trains; returns the seconds of each epoch (synchronising CUDA at each stamp)."""
    stamps = []

    def on_progress(event):
        if event["event"] in ("start", "epoch"):
            if rt.cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    run(on_progress)
    return [b - a for a, b in zip(stamps, stamps[1:])]
