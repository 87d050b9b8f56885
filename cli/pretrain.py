"""dpl pretrain: self-supervised pretraining of a backbone (rotation, jigsaw, context, SimCLR)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from dpl.cli import common
from dpl.cli.teach import (Arch, BatchSize, Crop, Flip, Lr, Momentum, Optimizer, Resize, Seed, Warmup,
                           WeightDecay, train_config)
from dpl.core import data, train
from dpl.core.pretext import TASKS, PretextOptions, Views, default_blur_prob, pretrain


@common.guarded
def pretrain_command(
    output: common.Output,
    task: Annotated[str, typer.Option(help=f"Pretext task: {', '.join(TASKS)}.")] = "rotation",
    data_spec: Annotated[str, typer.Option("--data", help="Images to pretrain on (labels are not used): NAME[:SPLIT].")] = "digits",
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: Resize = None,
    arch: Arch = "cnn-m",
    epochs: Annotated[int, typer.Option(min=0, help="Training epochs; 0 writes the untrained, randomly initialised backbone (the baseline of a probe table).")] = 30,
    batch_size: BatchSize = 256,
    lr: Lr = 0.05,
    optimizer: Optimizer = "sgd",
    momentum: Momentum = 0.9,
    weight_decay: WeightDecay = 5e-4,
    warmup_epochs: Warmup = 1.0,
    head_width: Annotated[int, typer.Option(min=1, help="Hidden width of the task's MLP head (SimCLR: of the projection head).")] = 512,
    crop: Crop = True,
    flip: Flip = True,
    permutations: Annotated[int, typer.Option(help="jigsaw: number of tile permutations (chosen for maximal Hamming distance).")] = 100,
    patch_size: Annotated[int | None, typer.Option(min=1, help="jigsaw, context: side the tiles are resized to for the backbone. \\[default: the image size]")] = None,
    color_drop: Annotated[bool, typer.Option(help="context: keep one random colour channel per patch (against chromatic aberration).")] = True,
    temperature: Annotated[float, typer.Option(help="simclr: NT-Xent temperature.")] = 0.5,
    projection_dim: Annotated[int, typer.Option(min=1, help="simclr: output width of the projection head.")] = 128,
    crop_scale: Annotated[float, typer.Option(help="simclr: smallest random-resized-crop area, as a fraction of the image.")] = 0.2,
    color_jitter: Annotated[float, typer.Option(help="simclr: colour-jitter strength s (brightness/contrast/saturation 0.8s, hue 0.2s; 0: off).")] = 0.5,
    color_jitter_prob: Annotated[float, typer.Option(help="simclr: probability of colour jitter per view.")] = 0.8,
    grayscale_prob: Annotated[float, typer.Option(help="simclr: probability of grayscale per view (colour images).")] = 0.2,
    blur_prob: Annotated[float | None, typer.Option(help="simclr: probability of Gaussian blur per view. \\[default: 0.5 for images of 64 px and more, else 0]")] = None,
    seed: Seed = 0,
    device: common.Device = "auto",
    workers: common.Workers = None,
    force: common.Force = False,
    resume: common.ResumeFlag = False,
    save_every: common.SaveEvery = 1,
    keep_state: common.KeepState = False,
    config: common.Config = None,
):
    """Pretrain a backbone without labels; the checkpoint fine-tunes with `dpl teach --init`."""
    state = common.resume_spec("pretrain", dict(locals()), resume, save_every)
    # TrainConfig wants at least one epoch; --epochs 0 skips training altogether.
    cfg = train_config(max(1, epochs), batch_size, lr, optimizer, momentum, weight_decay, warmup_epochs, seed)
    views = Views(crop_scale, color_jitter, color_jitter_prob, grayscale_prob, blur_prob or 0.0)
    opts = PretextOptions(task, head_width, crop, flip, permutations, patch_size, color_drop, temperature,
                          projection_dim, views)
    opts.check()
    common.check_output(output, force)
    rt = train.runtime(device, workers=workers)
    split = common.partition(labeled_per_class, labeled, split_seed)
    ds = data.load(data_spec, partition=split, part=part or "all", download=download, resize=resize, check_all=True)
    if blur_prob is None:
        opts = replace(opts, views=replace(views, blur_prob=default_blur_prob(ds.shape[1])))
    with common.TrainingProgress(f"pretrain {task}") as progress:
        result = pretrain(ds, arch, opts, cfg, rt, untrained=epochs == 0, on_progress=progress,
                          resume=state)
    common.write_result(output, result, state, keep_state)
