"""dpl pretrain: self-supervised pretraining of a backbone (rotation, jigsaw, context, SimCLR, PeCLR), on
classification data or on the figures of poses[:SOURCE] (their keypoints unused)."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common
from ..core import DplError, catalog, tasks

data, train, pretext = common.data, common.train, common.lazy("dpl.core.methods.pretext")
pose_data, partition = common.lazy("dpl.core.data.poses"), common.lazy("dpl.core.data.partition")

POSE_OPTIONS = common.POSE_OPTIONS
# what figures cannot take: they have no classes, and are drawn at --canvas
NOT_FOR_POSES = ("labeled_per_class", "resize", "download")


@common.guarded
@common.training_options(batch_size=256, without=("compile",))
def pretrain_command(
    ctx: typer.Context,
    output: common.Output,
    task: Annotated[str, typer.Option(help=f"Pretext task: {', '.join(catalog.PRETEXT_TASKS)}.",
                                      autocompletion=common.completer(catalog.PRETEXT_TASKS), rich_help_panel=common.Panel.PRETEXT)] = "rotation",
    data_spec: Annotated[str, typer.Option("--data", help="Images to pretrain on (labels are not used): NAME[:SPLIT], or the figures of poses[:SOURCE][:SPLIT] (keypoints not used).", rich_help_panel=common.Panel.DATA)] = "digits",
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: common.Resize = None,
    canvas: Annotated[int, typer.Option(help="Poses: the square canvas side, pixels.", rich_help_panel=common.Panel.POSES)] = 64,
    poses: common.Poses = 1000,
    test_poses: common.TestPoses = 300,
    pose_scale: common.PoseScale = "0.5,0.95",
    pose_rotation: common.PoseRotation = 30.0,
    clutter: common.Clutter = 3,
    truncation: common.Truncation = 0.1,
    pose_seed: common.PoseSeed = 0,
    arch: common.Arch = "cnn-m",
    epochs: Annotated[int, typer.Option(min=0, help="Training epochs; 0 writes the untrained, randomly initialised backbone (the baseline of a probe table).", rich_help_panel=common.Panel.OPTIMIZATION)] = 30,
    head_width: Annotated[int, typer.Option(min=1, max=65536, help="Hidden width of the task's MLP head (SimCLR: of the projection head).", rich_help_panel=common.Panel.PRETEXT)] = 512,
    crop: common.Crop = True,
    flip: common.Flip = True,
    permutations: Annotated[int, typer.Option(help="jigsaw: number of tile permutations (chosen for maximal Hamming distance).", rich_help_panel=common.Panel.PRETEXT)] = 100,
    patch_size: Annotated[int | None, typer.Option(min=1, max=2048, help="jigsaw, context: side the tiles are resized to for the backbone. \\[default: the image size]", rich_help_panel=common.Panel.PRETEXT)] = None,
    color_drop: Annotated[bool, typer.Option(help="context: keep one random colour channel per patch (against chromatic aberration).", rich_help_panel=common.Panel.PRETEXT)] = True,
    temperature: Annotated[float, typer.Option(help="simclr: NT-Xent temperature.", rich_help_panel=common.Panel.SIMCLR)] = 0.5,
    projection_dim: Annotated[int, typer.Option(min=1, max=65536, help="simclr: output width of the projection head.", rich_help_panel=common.Panel.SIMCLR)] = 128,
    crop_scale: Annotated[float, typer.Option(help="simclr: smallest random-resized-crop area, as a fraction of the image.", rich_help_panel=common.Panel.SIMCLR)] = 0.2,
    color_jitter: Annotated[float, typer.Option(help="simclr: colour-jitter strength s (brightness/contrast/saturation 0.8s, hue 0.2s; 0: off).", rich_help_panel=common.Panel.SIMCLR)] = 0.5,
    color_jitter_prob: Annotated[float, typer.Option(help="simclr: probability of colour jitter per view.", rich_help_panel=common.Panel.SIMCLR)] = 0.8,
    grayscale_prob: Annotated[float, typer.Option(help="simclr: probability of grayscale per view (colour images).", rich_help_panel=common.Panel.SIMCLR)] = 0.2,
    blur_prob: Annotated[float | None, typer.Option(help="simclr, peclr: probability of Gaussian blur per view. \\[default: 0.5 for images of 64 px and more, else 0]", rich_help_panel=common.Panel.SIMCLR)] = None,
    view_rotation: Annotated[float, typer.Option(help="peclr: each view turned about the image centre by an angle drawn in ±DEG (PeCLR's 45), undone on the projection.", rich_help_panel=common.Panel.PECLR)] = 45.0,
    view_scale: Annotated[str, typer.Option(help="peclr: each view zoomed about the centre by a factor drawn in LO,HI (PeCLR's crop margins, 0.8,1.25), undone on the projection.", rich_help_panel=common.Panel.PECLR)] = "0.8,1.25",
    view_translate: Annotated[float, typer.Option(help="peclr: each view shifted by up to this fraction of the side on each axis (PeCLR's crop jitter, 0.1), undone relative to the projection's range.", rich_help_panel=common.Panel.PECLR)] = 0.1,
    **shared,
):
    """Pretrain a backbone without labels: rotation, jigsaw, context, SimCLR or PeCLR.

    On classification data or on the figures of poses[:SOURCE]; the checkpoint fine-tunes with `dpl teach
    --init` (a classifier, or a keypoint model's backbone)."""
    options = common.options_of(locals())
    tasks.check_arch(arch, tasks.CLASSIFIER, "pretrain")
    figures = data_spec.partition(":")[0] == "poses"
    refused = common.given(ctx, *(NOT_FOR_POSES if figures else POSE_OPTIONS))
    if refused:
        why = "figures have no classes and are drawn at --canvas" if figures else "they shape poses[:SOURCE]'s figures"
        raise DplError(f"{', '.join(refused)} cannot apply to --data {data_spec}: {why}")
    spec = common.pose_spec(options) if figures else None
    state = common.resume_spec("pretrain", options, shared["resume"], shared["save_every"])
    cfg = common.train_config(options)
    views = pretext.Views(crop_scale=crop_scale, jitter=color_jitter, jitter_prob=color_jitter_prob,
                          grayscale_prob=grayscale_prob, blur_prob=blur_prob)
    opts = pretext.PretextOptions(task=task, head_width=head_width, crop=crop, flip=flip, permutations=permutations,
                                  patch_size=patch_size, color_drop=color_drop, temperature=temperature,
                                  projection_dim=projection_dim, views=views,
                                  geometry=pretext.Geometry(rotation=view_rotation, translate=view_translate,
                                                            scale=common.float_list(view_scale, "--view-scale")))
    common.check_output(output, shared["force"], options)
    sinks = common.run_records(output, shared["tensorboard"])
    rt = train.runtime(shared["device"], workers=shared["workers"])
    if figures:
        made = pose_data.load_poses(data_spec, "train", spec)
        ds = partition.part_of_images(made, labeled, split_seed, part or "all")
    else:
        ds = data.load(data_spec, partition=common.partition(options), part=part or "all", download=download,
                       resize=resize, check_all=True)
    with common.TrainingProgress(f"pretrain {task}", sinks) as progress:
        result = pretext.pretrain(ds, arch, opts, cfg, rt, on_progress=progress, resume=state)
    common.write_result(output, result, state, shared["keep_state"])
