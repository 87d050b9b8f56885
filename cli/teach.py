"""dpl teach: supervised training of a teacher, with the student-style noise available."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common, detect
from ..core import DplError, artifacts, data
from ..core.engine import train
from ..core.data.scenes import is_box_spec
from ..core.methods.teach import TeachOptions, teach


@common.guarded
def teach_command(
    ctx: typer.Context,
    output: common.Output,
    data_spec: common.DataSpec = "digits",
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    canvas: common.Canvas = 64,
    objects: common.Objects = "1,3",
    object_size: common.ObjectSize = "16,28",
    max_overlap: common.MaxOverlap = 0.1,
    scenes: common.Scenes = 1000,
    test_scenes: common.TestScenes = 300,
    scene_seed: common.SceneSeed = 0,
    scale_jitter: detect.ScaleJitter = None,
    download: common.Download = False,
    resize: common.Resize = None,
    stream: common.Stream = None,
    arch: common.Arch = "cnn-m",
    epochs: common.Epochs = 30,
    batch_size: common.BatchSize = 128,
    lr: common.Lr = 0.05,
    optimizer: common.Optimizer = "sgd",
    momentum: common.Momentum = 0.9,
    weight_decay: common.WeightDecay = 5e-4,
    warmup_epochs: common.Warmup = 1.0,
    log_every: common.LogEvery = 10,
    ema: common.Ema = None,
    tensorboard: common.TensorBoard = None,
    val: common.Val = None,
    val_per_class: common.ValPerClass = None,
    val_every: common.ValEvery = 1,
    keep: common.Keep = "last",
    label_smoothing: Annotated[float, typer.Option(min=0.0, max=0.99, help="Label smoothing of the cross-entropy.")] = 0.0,
    randaugment: common.RandAugment = None,
    crop: common.Crop = True,
    flip: common.Flip = True,
    dropout: common.Dropout = 0.0,
    stochastic_depth: common.StochasticDepth = 0.0,
    init: common.Init = None,
    pretrained: common.Pretrained = False,
    seed: common.Seed = 0,
    device: common.Device = "auto",
    compile: common.Compile = False,
    workers: common.Workers = None,
    force: common.Force = False,
    resume: common.ResumeFlag = False,
    save_every: common.SaveEvery = 1,
    keep_state: common.KeepState = False,
    config: common.Config = None,
):
    """Train a model on labeled data (the labeled part when a partition is given); on data with boxes
    (scenes:SOURCE, coco:PATH), a detector (--arch frcnn-BACKBONE)."""
    options = dict(locals())
    if is_box_spec(data_spec):
        return detect.teach(options)
    refused = common.given(ctx, *common.SCENE_OPTIONS, "scale_jitter")
    if refused:
        raise DplError(f"{', '.join(refused)} cannot apply to {data_spec}: they are for data with boxes (scenes:SOURCE)")
    state = common.resume_spec("teach", options, resume, save_every)
    cfg, model_opts, noise = common.train_config(options), common.model_options(options), common.noise_options(options)
    opts, val_opts, held = TeachOptions(label_smoothing=label_smoothing), common.val_options(options), common.holdout(options)
    common.check_output(output, force)
    sinks = common.run_records(output, tensorboard)
    rt = train.runtime(device, compile, workers=workers)
    split = common.partition(options)
    if resize is None and init is not None and data.is_image_files(data_spec):
        resize = artifacts.read_header(init, kind="checkpoint").meta["input"]["size"]   # image files: the init's size
    ds = data.load(data_spec, partition=split, part=part or ("labeled" if split.active else "all"), download=download,
                   resize=resize, stream=stream, check_all=True, workers=workers)
    common.say_source(ds)
    ds, val_ds = data.hold_out(ds, held)
    with common.TrainingProgress("teach", sinks) as progress:
        result = teach(ds, common.test_split(ds), model_opts, noise, cfg, rt, opts, on_progress=progress, resume=state,
                       val=val_ds, val_opts=val_opts)
    common.write_result(output, result, state, keep_state)
