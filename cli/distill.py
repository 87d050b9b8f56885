"""dpl distill: a student learns from labels, stored pseudo-labels, or live teachers, with noise."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import common
from .tasks import dispatch
from ..core import catalog, tasks


@common.guarded
def distill_command(
    ctx: typer.Context,
    output: common.Output,
    labels_dir: Annotated[list[Path] | None, typer.Option("--labels", help="Label folder from dpl label (offline: the teacher is not run). Repeat for several experts of different label spaces that labeled one pool: one student with a head per folder.", rich_help_panel=common.Panel.TEACHERS)] = None,
    head_names: Annotated[str | None, typer.Option(help="With several --labels: the heads' names, comma-separated. \\[default: each label folder's name]", show_default=False, rich_help_panel=common.Panel.TEACHERS)] = None,
    teacher: Annotated[list[Path] | None, typer.Option(help="Live teacher checkpoint (online KD); repeat for an ensemble.", rich_help_panel=common.Panel.TEACHERS)] = None,
    data_spec: common.InheritedData = None,
    labeled_data: Annotated[str | None, typer.Option(help="The labeled source, when the pseudo-labels are of a separate pool (e.g. a folder of unlabeled photos). \\[default: the teacher's own labeled training data, for labels of another source than the teacher's]", rich_help_panel=common.Panel.DATA)] = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    download: common.Download = False,
    resize: common.Resize = None,
    stream: common.Stream = None,
    loss: Annotated[str, typer.Option(autocompletion=lambda incomplete: [n for n in catalog.LOGIT_LOSSES if n.startswith(incomplete)], help=f"Loss between the student's and the teacher's class distributions: {', '.join(catalog.LOGIT_LOSSES)} (kd: Hinton's tempered KL; dkd: Zhao et al.'s decoupled KD, mdistiller's form; lskd: KD on z-scored logits, Sun et al. 2024; mse: squared difference of centred logits). All work offline from soft label shards; top-k shards serve kd and dkd only.", rich_help_panel=common.Panel.LOSS)] = "kd",
    dkd_alpha: Annotated[float | None, typer.Option(help="--loss dkd: weight of its target-class term (TCKD). \\[default: 1]", show_default=False, rich_help_panel=common.Panel.LOSS)] = None,
    dkd_beta: Annotated[float | None, typer.Option(help="--loss dkd: weight of its non-target-class term (NCKD). \\[default: 8]", show_default=False, rich_help_panel=common.Panel.LOSS)] = None,
    loss_warmup_epochs: Annotated[float | None, typer.Option(help="Ramp the distillation terms' weight linearly from 0 to 1 over this many epochs, per step (mdistiller's DKD warm-up). \\[default: dkd: 20, at most a quarter of --epochs; other losses: 0]", show_default=False, rich_help_panel=common.Panel.LOSS)] = None,
    feature_loss: Annotated[str | None, typer.Option(autocompletion=lambda incomplete: [n for n in catalog.FEATURE_LOSSES if n.startswith(incomplete)], help=f"Add a term comparing layers of the student and one live --teacher: {', '.join(catalog.FEATURE_LOSSES)} (at: attention transfer; rkd: relational distances and angles; pkt: probabilistic knowledge transfer; sp: similarity-preserving; crd: contrastive representation distillation; hint: FitNets' hint through a regressor). With --alpha 0, RepDistiller's rows: CE plus the feature term.", show_default=False, rich_help_panel=common.Panel.FEATURE_LOSS)] = None,
    feature_weight: Annotated[float | None, typer.Option(min=0.0, help="Weight of the feature term. \\[default: RepDistiller's: at 1000, rkd 1, pkt 30000, sp 3000, crd 0.8, hint 200 (its 100 on the plain MSE)]", show_default=False, rich_help_panel=common.Panel.FEATURE_LOSS)] = None,
    student_layer: Annotated[list[str] | None, typer.Option(help="Student layer of the feature loss, by module path (dpl info --layers; 'features': the input of the final Linear); repeat for several, paired in order with --teacher-layer. \\[default: at: the stage outputs, as many in each net (the shallower's count); sp: the last stage output; rkd, pkt, crd: features; hint: the middle block]", show_default=False, rich_help_panel=common.Panel.FEATURE_LOSS)] = None,
    teacher_layer: Annotated[list[str] | None, typer.Option(help="Teacher layer paired with each --student-layer, by module path in the teacher. \\[default: the loss's own, as for --student-layer]", show_default=False, rich_help_panel=common.Panel.FEATURE_LOSS)] = None,
    crd_queue: Annotated[int | None, typer.Option(help="--feature-loss crd: past teacher embeddings kept as negatives (0: the batch's only). \\[default: 4096]", show_default=False, rich_help_panel=common.Panel.FEATURE_LOSS)] = None,
    crd_dim: Annotated[int | None, typer.Option(help="--feature-loss crd: width of the embeddings. \\[default: 128]", show_default=False, rich_help_panel=common.Panel.FEATURE_LOSS)] = None,
    crd_tau: Annotated[float | None, typer.Option(help="--feature-loss crd: temperature. \\[default: 0.07]", show_default=False, rich_help_panel=common.Panel.FEATURE_LOSS)] = None,
    tau: Annotated[float | None, typer.Option(help="KD temperature. \\[default: the labels' own; 1 with --teacher]", rich_help_panel=common.Panel.LOSS)] = None,
    alpha: Annotated[float | None, typer.Option(min=0.0, help="Weight of a live teacher's KD term on labeled samples. With --labels of a source's own labeled images: offline KD, each row learns its true label plus alpha times the loss against its stored target. \\[default: 1]", show_default=False, rich_help_panel=common.Panel.LOSS)] = None,
    unlabeled_weight: Annotated[float | None, typer.Option(min=0.0, help="Weight of the pseudo-label term. \\[default: 1]", show_default=False, rich_help_panel=common.Panel.PSEUDO_LABELS)] = None,
    unlabeled_ratio: Annotated[float | None, typer.Option(help="Pseudo-labeled samples per labeled sample in each batch. \\[default: 3]", show_default=False, rich_help_panel=common.Panel.PSEUDO_LABELS)] = None,
    hard: Annotated[bool, typer.Option("--hard", help="Train on the argmax of soft labels.", rich_help_panel=common.Panel.PSEUDO_LABELS)] = False,
    min_confidence: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Keep pseudo-labels at least this confident.", rich_help_panel=common.Panel.PSEUDO_LABELS)] = None,
    balance: Annotated[int | None, typer.Option(min=1, help="Per class: keep the N most confident; duplicate a class with fewer.", rich_help_panel=common.Panel.PSEUDO_LABELS)] = None,
    bound_weight: Annotated[float | None, typer.Option(min=0.0, help="Detectors, --teacher: weight of Chen et al.'s teacher-bounded regression term (0: off). \\[default: 0.5]", show_default=False, rich_help_panel=common.Panel.DETECTORS)] = None,
    bound_margin: Annotated[float | None, typer.Option(min=0.0, help="Detectors, --teacher: its margin m: the student's squared regression error counts where it exceeds the teacher's less m. \\[default: 0]", show_default=False, rich_help_panel=common.Panel.DETECTORS)] = None,
    background_weight: Annotated[float | None, typer.Option(min=0.0, help="Detectors, --teacher: weight w0 of the background class in the soft cross-entropy (--alpha weighs that term, on the RoI classifier and the RPN objectness; --feature-loss hint adds the hint on backbone features). \\[default: 1.5]", show_default=False, rich_help_panel=common.Panel.DETECTORS)] = None,
    kd_decay: Annotated[bool, typer.Option("--kd-decay", help="Keypoints, --teacher: the distillation weights fall linearly from 1 to 0 over training (DWPose's weight decay).", rich_help_panel=common.Panel.LOSS)] = False,
    motion_weight: Annotated[float, typer.Option(min=0.0, help="Clips (a video pose student): the weight of the teacher's pose motion Δp (divided by its std) beside its pose (0: the pose alone).", rich_help_panel=common.Panel.LOSS)] = 0.1,
    head_only: Annotated[bool, typer.Option("--head-only", help="Keypoints: train the head of the --init model only, its backbone frozen (DWPose's second stage: --teacher and --init the same student).", rich_help_panel=common.Panel.MODEL)] = False,
    scale_jitter: common.ScaleJitter = None,
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
    randaugment: common.RandAugment = None,
    crop: common.Crop = True,
    flip: common.Flip = True,
    dropout: common.Dropout = 0.0,
    stochastic_depth: common.StochasticDepth = 0.0,
    init: common.Init = None,
    pretrained: common.Pretrained = False,
    seed: common.Seed = 0,
    allow_partial: common.AllowPartial = False,
    device: common.Device = "auto",
    compile: common.Compile = False,
    workers: common.Workers = None,
    force: common.Force = False,
    resume: common.ResumeFlag = False,
    save_every: common.SaveEvery = 1,
    keep_state: common.KeepState = False,
    config: common.Config = None,
):
    """Train a student on labeled data plus pseudo-labels or a live teacher.

    Pseudo-labels: label folders from dpl label (--labels, offline: the teacher is not run); a live teacher:
    checkpoints run beside the student (--teacher, online KD)."""
    options = dict(locals())
    given = [*(labels_dir or []), *(teacher or [])]
    return dispatch("distill", distill_task(teacher or [], labels_dir or []), ctx, options, given[0] if given else None)


def distill_task(teachers: list[Path], folders: list[Path]) -> tasks.Task:
    """A detector's distillation for a detector teacher or pseudo-boxes, a keypoint model's for a keypoint teacher
    or pseudo-keypoints; several label folders make a multi-head student; else a classifier's."""
    found = {tasks.of_artifact(p).name for p in [*teachers, *folders]}
    if found & {tasks.DETECTOR, tasks.BOX_LABELS}:
        return tasks.TASKS[tasks.DETECTOR]
    if found & {tasks.KEYPOINTS, tasks.KEYPOINT_LABELS}:
        from ..core.artifacts import folder_data

        clips = any(tasks.of_data(str(folder_data(p).get("spec", ""))).name == tasks.VIDEO_POSE
                    for p in folders if Path(p).is_dir())
        return tasks.TASKS[tasks.VIDEO_POSE if clips else tasks.KEYPOINTS]
    return tasks.TASKS[tasks.EXPERTS if len(folders) > 1 else tasks.CLASSIFIER]
