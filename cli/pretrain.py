"""dpl pretrain: self-supervised pretraining of a backbone (rotation, jigsaw, context, SimCLR, PeCLR), on
classification data or on the figures of poses[:SOURCE] (their keypoints unused); or from time (order, odd-one-out,
tracking) on clips: clips[:SOURCE], moving:SOURCE, clipfolder:PATH."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common
from ..core import DplError, catalog, tasks

data, train, pretext = common.data, common.train, common.lazy("dpl.core.methods.pretext")
pose_data, partition = common.lazy("dpl.core.data.poses"), common.lazy("dpl.core.data.partition")
clip_data, clip_figures = common.lazy("dpl.core.data.clips"), common.lazy("dpl.core.data.clip_figures")

POSE_OPTIONS = common.POSE_OPTIONS
# what figures cannot take: they have no classes, and are drawn at --canvas
NOT_FOR_POSES = ("labeled_per_class", "resize", "download")
CLIPS_PANEL, TIME_PANEL = "Clips", "Time"
# the options that shape synthetic clips (clips[:SOURCE], moving:SOURCE: core/data/clip_figures.py), and those of the
# tasks on clips
CLIP_OPTIONS = ("clips", "test_clips", "frames", "clip_seed")
TIME_OPTIONS = ("tuple_window", "sequences", "sequence_frames", "track_gap", "margin")
# what clips cannot take: a partition, image files' decoding, the image tasks' transforms, the figures of poses
NOT_FOR_CLIPS = ("labeled_per_class", "labeled", "split_seed", "part", "download", "resize", "crop", "flip",
                 "permutations", "color_drop", "temperature", "crop_scale", "color_jitter", "color_jitter_prob",
                 "grayscale_prob", "blur_prob", "view_rotation", "view_scale", "view_translate",
                 *(o for o in POSE_OPTIONS if o != "canvas"))
CLIP_BATCH = 32          # clips a step where --batch-size is not given


@common.guarded
@common.training_options(without=("compile",))
def pretrain_command(
    ctx: typer.Context,
    output: common.Output,
    task: Annotated[str | None, typer.Option(help=f"Pretext task: {', '.join(catalog.PRETEXT_TASKS)}; the last {len(catalog.CLIP_PRETEXT_TASKS)} learn from time, on clips. \\[default: rotation; order on clips]",
                                             autocompletion=common.completer(catalog.PRETEXT_TASKS), rich_help_panel=common.Panel.PRETEXT)] = None,
    data_spec: Annotated[str, typer.Option("--data", help="Images to pretrain on (labels are not used): NAME[:SPLIT], or the figures of poses[:SOURCE][:SPLIT] (keypoints not used); or clips for the tasks on time: clips[:SOURCE][:SPLIT] (figures performing actions), moving:SOURCE[:SPLIT] (moving objects), clipfolder:PATH[:SPLIT].", rich_help_panel=common.Panel.DATA)] = "digits",
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: common.Resize = None,
    canvas: Annotated[int, typer.Option(help="Poses, clips: the square canvas side, pixels (clipfolder: the side frames are decoded at).", rich_help_panel=common.Panel.POSES)] = 64,
    poses: common.Poses = 1000,
    test_poses: common.TestPoses = 300,
    pose_scale: common.PoseScale = "0.5,0.95",
    pose_rotation: common.PoseRotation = 30.0,
    clutter: common.Clutter = 3,
    truncation: common.Truncation = 0.1,
    pose_seed: common.PoseSeed = 0,
    clips: Annotated[int, typer.Option(help="Clips: training clips (clips:, moving:); the held-out check reads --test-clips of the test split.", rich_help_panel=CLIPS_PANEL)] = 400,
    test_clips: Annotated[int, typer.Option(help="Clips: held-out test clips, on which the task is measured after training.", rich_help_panel=CLIPS_PANEL)] = 200,
    frames: Annotated[int, typer.Option(help="Clips: frames per clip.", rich_help_panel=CLIPS_PANEL)] = 16,
    clip_seed: Annotated[int, typer.Option(help="Clips: seed of the clips (each split its own stream of it).", rich_help_panel=CLIPS_PANEL)] = 0,
    arch: common.Arch = "cnn-m",
    batch_size: Annotated[int | None, typer.Option(min=1, help=f"Batch size: images a step; on clips, clips a step (each asked one question). \\[default: 256; {CLIP_BATCH} clips]", rich_help_panel=common.Panel.OPTIMIZATION)] = None,
    epochs: Annotated[int, typer.Option(min=0, help="Training epochs; 0 writes the untrained, randomly initialised backbone (the baseline of a probe table).", rich_help_panel=common.Panel.OPTIMIZATION)] = 30,
    head_width: Annotated[int, typer.Option(min=1, max=65536, help="Hidden width of the task's MLP head (SimCLR: of the projection head).", rich_help_panel=common.Panel.PRETEXT)] = 512,
    crop: common.Crop = True,
    flip: common.Flip = True,
    permutations: Annotated[int, typer.Option(help="jigsaw: number of tile permutations (chosen for maximal Hamming distance).", rich_help_panel=common.Panel.PRETEXT)] = 100,
    patch_size: Annotated[int | None, typer.Option(min=1, max=2048, help="jigsaw, context: side the tiles are resized to for the backbone; tracking: the side its patches (half the frame's side) are resized to. \\[default: the image size; tracking: half the frame's side]", rich_help_panel=common.Panel.PRETEXT)] = None,
    color_drop: Annotated[bool, typer.Option(help="context: keep one random colour channel per patch (against chromatic aberration).", rich_help_panel=common.Panel.PRETEXT)] = True,
    temperature: Annotated[float, typer.Option(help="simclr: NT-Xent temperature.", rich_help_panel=common.Panel.SIMCLR)] = 0.5,
    projection_dim: Annotated[int, typer.Option(min=1, max=65536, help="simclr, peclr, tracking: output width of the projection head.", rich_help_panel=common.Panel.SIMCLR)] = 128,
    crop_scale: Annotated[float, typer.Option(help="simclr: smallest random-resized-crop area, as a fraction of the image.", rich_help_panel=common.Panel.SIMCLR)] = 0.2,
    color_jitter: Annotated[float, typer.Option(help="simclr: colour-jitter strength s (brightness/contrast/saturation 0.8s, hue 0.2s; 0: off).", rich_help_panel=common.Panel.SIMCLR)] = 0.5,
    color_jitter_prob: Annotated[float, typer.Option(help="simclr: probability of colour jitter per view.", rich_help_panel=common.Panel.SIMCLR)] = 0.8,
    grayscale_prob: Annotated[float, typer.Option(help="simclr: probability of grayscale per view (colour images).", rich_help_panel=common.Panel.SIMCLR)] = 0.2,
    blur_prob: Annotated[float | None, typer.Option(help="simclr, peclr: probability of Gaussian blur per view. \\[default: 0.5 for images of 64 px and more, else 0]", rich_help_panel=common.Panel.SIMCLR)] = None,
    view_rotation: Annotated[float, typer.Option(help="peclr: each view turned about the image centre by an angle drawn in ±DEG (PeCLR's 45), undone on the projection.", rich_help_panel=common.Panel.PECLR)] = 45.0,
    view_scale: Annotated[str, typer.Option(help="peclr: each view zoomed about the centre by a factor drawn in LO,HI (PeCLR's crop margins, 0.8,1.25), undone on the projection.", rich_help_panel=common.Panel.PECLR)] = "0.8,1.25",
    view_translate: Annotated[float, typer.Option(help="peclr: each view shifted by up to this fraction of the side on each axis (PeCLR's crop jitter, 0.1), undone relative to the projection's range.", rich_help_panel=common.Panel.PECLR)] = 0.1,
    tuple_window: Annotated[int, typer.Option(help="order: the frames a tuple spans (its ends a, c; b between them, or outside for a negative); windows are drawn by their motion.", rich_help_panel=TIME_PANEL)] = 5,
    sequences: Annotated[int, typer.Option(help="odd-one-out: sequences per question, one of them shuffled.", rich_help_panel=TIME_PANEL)] = 3,
    sequence_frames: Annotated[int, typer.Option(help="odd-one-out: frames per sequence.", rich_help_panel=TIME_PANEL)] = 4,
    track_gap: Annotated[int, typer.Option(help="tracking: frames from a query patch to the patch tracked as its positive.", rich_help_panel=TIME_PANEL)] = 3,
    margin: Annotated[float, typer.Option(help="tracking: margin of the triplet ranking loss on D = 1 - cos.", rich_help_panel=TIME_PANEL)] = 0.5,
    **shared,
):
    """Pretrain a backbone without labels, on images or from time in clips.

    Rotation, jigsaw, context, SimCLR or PeCLR on classification data or on the figures of poses[:SOURCE]; order,
    odd-one-out or tracking on clips (clips[:SOURCE], moving:SOURCE, clipfolder:PATH), measured on held-out clips
    after training. The checkpoint fine-tunes with `dpl
    teach --init` (a classifier, or a keypoint model's backbone)."""
    options = common.options_of(locals())
    tasks.check_arch(arch, tasks.CLASSIFIER, "pretrain")
    kind = data_spec.partition(":")[0]
    figures, clipped = kind == "poses", kind in catalog.CLIP_SOURCES
    task = task or ("order" if clipped else "rotation")
    if clipped:
        refused = common.given(ctx, *NOT_FOR_CLIPS)
        why = "clips have no classes or partition, and take the tasks on time"
        if kind == "clipfolder" and not refused:
            refused, why = common.given(ctx, *CLIP_OPTIONS), "they shape synthetic clips"
        if task not in catalog.CLIP_PRETEXT_TASKS:
            raise DplError(f"--task {task} learns from images; on clips ({data_spec}): "
                           f"{', '.join(catalog.CLIP_PRETEXT_TASKS)}")
    else:
        for names, why in (((NOT_FOR_POSES if figures else POSE_OPTIONS),
                            "figures have no classes and are drawn at --canvas" if figures else
                            "they shape poses[:SOURCE]'s figures"),
                           (CLIP_OPTIONS, "they shape synthetic clips"),
                           (TIME_OPTIONS, "they belong to the tasks on clips")):
            refused = common.given(ctx, *names)
            if refused:
                break
        if task in catalog.CLIP_PRETEXT_TASKS:
            raise DplError(f"--task {task} learns from time: it takes clips (--data clips[:SOURCE], moving:SOURCE or "
                           f"clipfolder:PATH), not {data_spec}")
    if refused:
        raise DplError(f"{', '.join(refused)} cannot apply to --data {data_spec}: {why}")
    options["task"] = task
    options["batch_size"] = batch_size or (CLIP_BATCH if clipped else 256)
    spec = common.pose_spec(options) if figures else None
    state = common.resume_spec("pretrain", options, shared["resume"], shared["save_every"])
    cfg = common.train_config(options)
    views = pretext.Views(crop_scale=crop_scale, jitter=color_jitter, jitter_prob=color_jitter_prob,
                          grayscale_prob=grayscale_prob, blur_prob=blur_prob)
    opts = pretext.PretextOptions(task=task, head_width=head_width, crop=crop, flip=flip, permutations=permutations,
                                  patch_size=patch_size, color_drop=color_drop, temperature=temperature,
                                  projection_dim=projection_dim, views=views,
                                  geometry=pretext.Geometry(rotation=view_rotation, translate=view_translate,
                                                            scale=common.float_list(view_scale, "--view-scale")),
                                  tuple_window=tuple_window, sequences=sequences, sequence_frames=sequence_frames,
                                  track_gap=track_gap, margin=margin)
    common.check_output(output, shared["force"], options)
    if clipped:
        made = None if kind == "clipfolder" else clip_figures.ClipSpec(canvas=canvas, count=clips,
                                                                         test_count=test_clips, frames=frames,
                                                                         seed=clip_seed)
        size = canvas if kind != "clipfolder" or common.given(ctx, "canvas") else None
        train_clips, test = clip_sets(data_spec, made, size, pretext.frames_needed(opts), task)
    sinks = common.run_records(output, shared["tensorboard"])
    rt = train.runtime(shared["device"], workers=shared["workers"])
    if clipped:
        with common.TrainingProgress(f"pretrain {task}", sinks) as progress:
            result = pretext.pretrain_clips(train_clips, test, arch, opts, cfg, rt, on_progress=progress, resume=state)
        measured = result.meta["metrics"].get("pretext_test_acc")
        if measured is not None:
            held = result.meta["pretext"]["held_out"]
            common.say(f"dpl: {task} on {held['clips']} held-out clips of {held['spec']}: accuracy {measured:.3f} "
                       f"({held['questions']} questions; chance {held['chance']:.3f})")
            common.flush_notes()
        common.write_result(output, result, state, shared["keep_state"])
        return
    if figures:
        made = pose_data.load_poses(data_spec, "train", spec)
        ds = partition.part_of_images(made, labeled, split_seed, part or "all")
    else:
        ds = data.load(data_spec, partition=common.partition(options), part=part or "all", download=download,
                       resize=resize, check_all=True)
    with common.TrainingProgress(f"pretrain {task}", sinks) as progress:
        result = pretext.pretrain(ds, arch, opts, cfg, rt, on_progress=progress, resume=state)
    common.write_result(output, result, state, shared["keep_state"])


def clip_sets(data_spec: str, made, size: int | None, need: int, task: str):
    """The training clips the spec names and the held-out test clips of the same making (None where there are none,
    said), as read: the clips shorter than the `need` frames of the task are said here (refused where none is long
    enough to train on) and left out by `pretext.pretrain_clips`."""
    clips = clip_data.load_clips(data_spec, "train", made, size=size)
    _, note = clip_data.check_length(clips, need, f"--task {task}")
    for line in (*clips.notes, note):
        if line:
            common.say(f"dpl: {line}")
    split = clips.record.get("split", "train")
    if split == "test":
        common.say(f"dpl: trained on the test clips of {clips.spec}: no held-out check")
        return clips, None
    base = data_spec.removesuffix(f":{split}")
    try:
        test = clip_data.load_clips(base, "test", made, size=clips.size, channels=clips.channels)
        kept, note = clip_data.check_length(test, need, f"--task {task}")
    except DplError as e:
        common.say(f"dpl: no held-out check: {e}")
        return clips, None
    for line in (*test.notes, note):
        if line:
            common.say(f"dpl: held-out {line}")
    if len(kept) < 2:
        common.say(f"dpl: no held-out check: {test.spec} has {len(kept)} clip long enough, and the check asks 2 at once")
        return clips, None
    return clips, test
