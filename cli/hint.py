"""dpl hint: FitNets stage 1, a student's guided layer learns a teacher's hint layer through a regressor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import common
from ..core import artifacts, data
from ..core.engine import train
from ..core.methods.hint import HintOptions, hint


@common.guarded
def hint_command(
    output: common.Output,
    teacher: Annotated[Path, typer.Option(help="Teacher checkpoint whose hint layer the student learns.")],
    hint_layer: Annotated[str | None, typer.Option(help="Teacher module path (dpl info --layers). \\[default: the middle of the teacher]")] = None,
    guided_layer: Annotated[str | None, typer.Option(help="Student module path. \\[default: the middle of the student]")] = None,
    data_spec: common.InheritedData = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: common.Resize = None,
    arch: common.Arch = "fitnet-thin",
    epochs: common.Epochs = 10,
    batch_size: common.BatchSize = 128,
    lr: common.Lr = 0.05,
    optimizer: common.Optimizer = "sgd",
    momentum: common.Momentum = 0.9,
    weight_decay: common.WeightDecay = 5e-4,
    warmup_epochs: common.Warmup = 1.0,
    log_every: common.LogEvery = 10,
    ema: common.Ema = None,
    tensorboard: common.TensorBoard = None,
    randaugment: common.RandAugment = None,
    crop: common.Crop = True,
    flip: common.Flip = True,
    init: common.Init = None,
    seed: common.Seed = 0,
    device: common.Device = "auto",
    workers: common.Workers = None,
    force: common.Force = False,
    resume: common.ResumeFlag = False,
    save_every: common.SaveEvery = 1,
    keep_state: common.KeepState = False,
    config: common.Config = None,
):
    """FitNets stage 1. Stage 2 is `dpl distill --init OUT --teacher TEACHER --tau ...` (hints need no labels,
    so without a partition every sample of the split is used)."""
    options = dict(locals())
    state = common.resume_spec("hint", options, resume, save_every)
    cfg, model_opts, noise = common.train_config(options), common.model_options(options), common.noise_options(options)
    opts = HintOptions(hint_layer=hint_layer, guided_layer=guided_layer)
    common.check_output(output, force)
    sinks = common.run_records(output, tensorboard)
    rt = train.runtime(device, workers=workers)
    teacher_meta = artifacts.read_header(teacher, kind="checkpoint").meta
    spec, split, size = common.data_of(teacher_meta, data_spec, common.partition(options), resize)
    ds = data.load(spec, partition=split, part=part or "all", download=download, resize=size, check_all=True)
    common.say_inherited("hints on", f"the teacher {teacher}", teacher_meta, data_spec, common.partition(options),
                         resize, ds)
    with common.TrainingProgress("hint", sinks) as progress:
        result = hint(ds, teacher, model_opts, noise, opts, cfg, rt, on_progress=progress, resume=state)
    common.write_result(output, result, state, keep_state)
