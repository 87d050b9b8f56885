"""dpl teach: supervised training of a teacher, with the student-style noise available."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common
from .tasks import dispatch
from ..core import tasks


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
    poses: common.Poses = 1000,
    test_poses: common.TestPoses = 300,
    pose_scale: common.PoseScale = "0.5,0.95",
    pose_rotation: common.PoseRotation = 30.0,
    clutter: common.Clutter = 3,
    truncation: common.Truncation = 0.1,
    pose_seed: common.PoseSeed = 0,
    pose_part: common.PosePart = "whole",
    part_size: common.PartSize = 32,
    scale_jitter: common.ScaleJitter = None,
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
    label_smoothing: Annotated[float, typer.Option(min=0.0, max=0.99, help="Label smoothing of the cross-entropy.", rich_help_panel=common.Panel.OPTIMIZATION)] = 0.0,
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
    """Train on labeled data: a teacher, a detector (boxes), a keypoint model (poses).

    The labeled part when a partition is given; on data with boxes (scenes:SOURCE, coco:PATH), a detector
    (--arch frcnn-BACKBONE); on data with keypoints (poses[:SOURCE]), heatmaps on the --arch backbone."""
    options = dict(locals())
    return dispatch("teach", tasks.of_data(data_spec), ctx, options, data_spec)
