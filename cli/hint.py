"""dpl hint: FitNets stage 1, a student's guided layer learns a teacher's hint layer through a regressor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dpl.cli import common
from dpl.cli.label import Resize, data_of
from dpl.cli.teach import (Arch, BatchSize, Crop, Epochs, Flip, Init, Lr, Momentum, Optimizer, RandAugment, Seed,
                           Warmup, WeightDecay, train_config)
from dpl.core import artifacts, augment, data, train
from dpl.core.hint import HintOptions, hint
from dpl.core.teach import ModelOptions, NoiseOptions


@common.guarded
def hint_command(
    output: common.Output,
    teacher: Annotated[Path, typer.Option(help="Teacher checkpoint whose hint layer the student learns.")],
    hint_layer: Annotated[str | None, typer.Option(help="Teacher module path (dpl info --layers). \\[default: the middle of the teacher]")] = None,
    guided_layer: Annotated[str | None, typer.Option(help="Student module path. \\[default: the middle of the student]")] = None,
    data_spec: Annotated[str | None, typer.Option("--data", help="Training data. \\[default: the teacher's]")] = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: Resize = None,
    arch: Arch = "fitnet-thin",
    epochs: Epochs = 10,
    batch_size: BatchSize = 128,
    lr: Lr = 0.05,
    optimizer: Optimizer = "sgd",
    momentum: Momentum = 0.9,
    weight_decay: WeightDecay = 5e-4,
    warmup_epochs: Warmup = 1.0,
    randaugment: RandAugment = None,
    crop: Crop = True,
    flip: Flip = True,
    init: Init = None,
    seed: Seed = 0,
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
    state = common.resume_spec("hint", dict(locals()), resume, save_every)
    cfg = train_config(epochs, batch_size, lr, optimizer, momentum, weight_decay, warmup_epochs, seed)
    noise = NoiseOptions(augment.parse_randaugment(randaugment), crop, flip)
    common.check_output(output, force)
    rt = train.runtime(device, workers=workers)
    spec, split, resize = data_of(artifacts.read_header(teacher, kind="checkpoint").meta, data_spec,
                                  common.partition(labeled_per_class, labeled, split_seed), resize)
    ds = data.load(spec, partition=split, part=part or "all", download=download, resize=resize, check_all=True)
    with common.TrainingProgress("hint") as progress:
        result = hint(ds, teacher, ModelOptions(arch, init=init), noise, HintOptions(hint_layer, guided_layer),
                      cfg, rt, on_progress=progress, resume=state)
    common.write_result(output, result, state, keep_state)
