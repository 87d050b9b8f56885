"""dpl eval: accuracy and calibration of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import common
from .tasks import dispatch
from ..core import tasks


@common.guarded
def eval_command(
    ctx: typer.Context,
    checkpoints: Annotated[list[Path], typer.Argument(metavar="CHECKPOINT...", help="Checkpoint(s) to measure, or a label folder.")],
    data_spec: Annotated[str | None, typer.Option("--data", autocompletion=common.complete_data, help="Data to measure on. \\[default: the test split of the checkpoint's own data source]", rich_help_panel=common.Panel.DATA)] = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: common.Resize = None,
    stream: common.Stream = None,
    linear_probe: Annotated[bool, typer.Option("--linear-probe", help="Train a linear classifier on frozen features of the training split (its labeled part with --labeled-per-class); report its top-1 here.", rich_help_panel=common.Panel.MEASURES)] = False,
    layer: Annotated[list[str] | None, typer.Option(help="Also probe this layer (module path; repeatable), average-pooled to at most 2048 values. Implies --linear-probe.", rich_help_panel=common.Panel.MEASURES)] = None,
    knn: Annotated[list[int] | None, typer.Option(min=1, help="Weighted kNN top-1 on frozen features with K neighbours (repeatable; cosine, temperature 0.07).", rich_help_panel=common.Panel.MEASURES)] = None,
    head: Annotated[list[str] | None, typer.Option(help="A multi-head student: measure this head only (repeatable). \\[default: every head, each on its expert's test split]", show_default=False, rich_help_panel=common.Panel.MEASURES)] = None,
    flip_test: common.FlipTest = False,
    few_shot: Annotated[list[int] | None, typer.Option(min=1, help="Clips: few-shot action recognition with K labeled clips per class (repeatable): per-frame features pooled over time, nearest class mean. \\[default: 1 and 5]", show_default=False, rich_help_panel=common.Panel.MEASURES)] = None,
    episodes: Annotated[int, typer.Option(min=1, help="Clips: few-shot episodes, each its own seeded draw of the labeled clips.", rich_help_panel=common.Panel.MEASURES)] = 20,
    canvas: common.ClipCanvas = 64,
    clip_count: common.ClipCount = 400,
    test_clips: common.TestClips = 200,
    frames: common.Frames = 16,
    clip_seed: common.ClipSeed = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Inference batch size.", rich_help_panel=common.Panel.RUN)] = 512,
    device: common.Device = "auto",
    workers: common.Workers = None,
    seeds: Annotated[bool, typer.Option("--seeds", help="Group checkpoints whose recorded commands differ only in --seed, -o/--output and options that do not change what a run computes (--device, --force, ...): one row per group, mean ± std (n-1) of top1, NLL and ECE (detectors: mAP@[.5:.95], @.5, @.75).", rich_help_panel=common.Panel.MEASURES)] = False,
    as_json: common.Json = False,
    allow_partial: common.AllowPartial = False,
    config: common.Config = None,
):
    """Measure checkpoints (accuracy, NLL, calibration) or a label folder's accuracy.

    Top-1/top-5 accuracy, NLL, expected calibration error (15 bins) and per-class accuracy of a
    checkpoint (several: one comparison table, a JSON list); or, for a label folder, pseudo-label accuracy
    overall and above confidence thresholds.

    --linear-probe, --layer and --knn also measure frozen features: probes fit on the training split of
    the same source and are measured on the evaluated data. --seeds summarizes runs repeated with other
    seeds: {"results": [...], "groups": [...]} with --json."""
    options = dict(locals())
    # on clips every model with per-frame features is a row of one few-shot table, whatever its task
    task = tasks.TASKS[tasks.VIDEO_POSE] if tasks.on_data("eval", tasks.TASKS[tasks.CLASSIFIER], data_spec).name \
        == tasks.VIDEO_POSE else tasks.same_task("eval", checkpoints)
    return dispatch("eval", task, ctx, options, checkpoints[0])
