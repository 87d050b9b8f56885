"""dpl label: un-noised teacher(s) write pseudo-label shards for the unlabeled data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from . import common
from .tasks import dispatch
from ..core import tasks


@common.guarded
def label_command(
    ctx: typer.Context,
    teacher: Annotated[list[Path], typer.Argument(help="Teacher checkpoint(s); several are an ensemble (mean probabilities), or part experts of keypoints (body, hands, face: whole-body pseudo-keypoints, DOPE).", rich_help_panel=common.Panel.TEACHERS)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The label folder to write.", rich_help_panel=common.Panel.OUTPUT)],
    data_spec: Annotated[str | None, typer.Option("--data", autocompletion=common.complete_data, help="Data to label. \\[default: the teacher's training data]", rich_help_panel=common.Panel.DATA)] = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: common.Resize = None,
    stream: common.Stream = None,
    ensemble: Annotated[list[Path] | None, typer.Option(help="More teachers to average with the first (repeatable).", rich_help_panel=common.Panel.TEACHERS)] = None,
    head: Annotated[list[str] | None, typer.Option(help="A multi-head student (dpl distill --labels A/ --labels B/): label with this head only (repeatable). \\[default: every head, each into OUTPUT/HEAD/]", show_default=False, rich_help_panel=common.Panel.TEACHERS)] = None,
    soft: Annotated[bool, typer.Option("--soft/--hard", help="Store full probabilities, or only label + confidence.", rich_help_panel=common.Panel.LABELS)] = True,
    topk: Annotated[int | None, typer.Option(min=1, help="Store only the top K classes' probabilities (int32 + float16).", rich_help_panel=common.Panel.LABELS)] = None,
    tau: Annotated[float, typer.Option(help="Softmax temperature applied to the teacher logits.", rich_help_panel=common.Panel.LABELS)] = 1.0,
    shard_size: Annotated[int, typer.Option(min=1, help="Samples per shard file.", rich_help_panel=common.Panel.LABELS)] = 50_000,
    views: Annotated[int | None, typer.Option(help="Store K augmented views per sample (crop after padding, flip: the student's --crop and --flip) with the teacher's output on each; dpl distill --labels replays one per sample and epoch, so the student sees what the teacher saw (consistent-view offline KD). The un-augmented image's labels are stored as well.", show_default=False, rich_help_panel=common.Panel.LABELS)] = None,
    view_seed: Annotated[int, typer.Option(help="Seed of the views' crops and flips (sample i's views depend on it and i alone).", rich_help_panel=common.Panel.LABELS)] = 0,
    crop: common.Crop = True,
    flip: common.Flip = True,
    present: Annotated[float, typer.Option(help="A WSDDN model (dpl wsddn): the image score from which a class counts as present; each present class gets its top box.", rich_help_panel=common.Panel.LABELS)] = 0.5,
    batch_size: Annotated[int, typer.Option(min=1, help="Inference batch size.", rich_help_panel=common.Panel.RUN)] = 512,
    shard: Annotated[str | None, typer.Option(help="Label only part I of N (I/N, from 0): N independent jobs fill one folder. \\[default: the torchrun rank, else 0/1]", rich_help_panel=common.Panel.RUN)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Keep the shards already in the folder that match this run; label the rest.", rich_help_panel=common.Panel.RUN)] = False,
    flip_test: common.FlipTest = False,
    canvas: common.ClipCanvas = 64,
    clip_count: common.ClipCount = 400,
    test_clips: common.TestClips = 200,
    frames: common.Frames = 16,
    clip_seed: common.ClipSeed = 0,
    device: common.Device = "auto",
    workers: common.Workers = None,
    force: common.Force = False,
    as_json: common.Json = False,
    config: common.Config = None,
):
    """Label the unlabeled part (or the whole split) with an un-noised teacher.

    Reports label accuracy against the ground truth when the data has it. Under torchrun, each rank labels
    its own part and writes its own shard series; the folder is complete when every rank's shards are there.
    A multi-head student writes a label folder per head, OUTPUT/HEAD/."""
    options = dict(locals())
    return dispatch("label", tasks.of_checkpoint(teacher[0]), ctx, options, teacher[0])
