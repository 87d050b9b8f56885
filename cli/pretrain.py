"""dpl pretrain: self-supervised pretraining of a backbone (rotation, jigsaw, context, SimCLR)."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common
from ..core import data
from ..core.engine import train
from ..core.methods.pretext import TASKS, PretextOptions, Views, pretrain


@common.guarded
def pretrain_command(
    output: common.Output,
    task: Annotated[str, typer.Option(help=f"Pretext task: {', '.join(TASKS)}.",
                                      autocompletion=lambda incomplete: [t for t in TASKS if t.startswith(incomplete)])] = "rotation",
    data_spec: Annotated[str, typer.Option("--data", help="Images to pretrain on (labels are not used): NAME[:SPLIT].")] = "digits",
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: common.Resize = None,
    arch: common.Arch = "cnn-m",
    epochs: Annotated[int, typer.Option(min=0, help="Training epochs; 0 writes the untrained, randomly initialised backbone (the baseline of a probe table).")] = 30,
    batch_size: common.BatchSize = 256,
    lr: common.Lr = 0.05,
    optimizer: common.Optimizer = "sgd",
    momentum: common.Momentum = 0.9,
    weight_decay: common.WeightDecay = 5e-4,
    warmup_epochs: common.Warmup = 1.0,
    log_every: common.LogEvery = 10,
    ema: common.Ema = None,
    tensorboard: common.TensorBoard = None,
    head_width: Annotated[int, typer.Option(min=1, help="Hidden width of the task's MLP head (SimCLR: of the projection head).")] = 512,
    crop: common.Crop = True,
    flip: common.Flip = True,
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
    seed: common.Seed = 0,
    device: common.Device = "auto",
    workers: common.Workers = None,
    force: common.Force = False,
    resume: common.ResumeFlag = False,
    save_every: common.SaveEvery = 1,
    keep_state: common.KeepState = False,
    config: common.Config = None,
):
    """Pretrain a backbone without labels; the checkpoint fine-tunes with `dpl teach --init`."""
    options = dict(locals())
    state = common.resume_spec("pretrain", options, resume, save_every)
    cfg = common.train_config(options)
    views = Views(crop_scale=crop_scale, jitter=color_jitter, jitter_prob=color_jitter_prob,
                  grayscale_prob=grayscale_prob, blur_prob=blur_prob)
    opts = PretextOptions(task=task, head_width=head_width, crop=crop, flip=flip, permutations=permutations,
                          patch_size=patch_size, color_drop=color_drop, temperature=temperature,
                          projection_dim=projection_dim, views=views)
    common.check_output(output, force)
    sinks = common.run_records(output, tensorboard)
    rt = train.runtime(device, workers=workers)
    ds = data.load(data_spec, partition=common.partition(options), part=part or "all", download=download,
                   resize=resize, check_all=True)
    with common.TrainingProgress(f"pretrain {task}", sinks) as progress:
        result = pretrain(ds, arch, opts, cfg, rt, on_progress=progress, resume=state)
    common.write_result(output, result, state, keep_state)
