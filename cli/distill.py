"""dpl distill: a student learns from labels, stored pseudo-labels, or live teachers, with noise."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import common, detect
from ..core import DplError, artifacts, data, losses
from ..core.data import boxes
from ..core.methods import experts
from ..core.engine import train
from ..core.methods.distill import DistillOptions, distill, source_meta
from ..core.methods.features import FeatureOptions


@common.guarded
def distill_command(
    output: common.Output,
    labels_dir: Annotated[list[Path] | None, typer.Option("--labels", help="Label folder from dpl label (offline: the teacher is not run). Repeat for several experts of different label spaces that labeled one pool: one student with a head per folder.")] = None,
    head_names: Annotated[str | None, typer.Option(help="With several --labels: the heads' names, comma-separated. \\[default: each label folder's name]", show_default=False)] = None,
    teacher: Annotated[list[Path] | None, typer.Option(help="Live teacher checkpoint (online KD); repeat for an ensemble.")] = None,
    data_spec: common.InheritedData = None,
    labeled_data: Annotated[str | None, typer.Option(help="The labeled source, when the pseudo-labels are of a separate pool (e.g. a folder of unlabeled photos). \\[default: the teacher's own labeled training data, for labels of another source than the teacher's]")] = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    download: common.Download = False,
    resize: common.Resize = None,
    stream: common.Stream = None,
    loss: Annotated[str, typer.Option(autocompletion=lambda incomplete: [n for n in losses.LOGIT_LOSSES if n.startswith(incomplete)], help=f"Loss between the student's and the teacher's class distributions: {', '.join(losses.LOGIT_LOSSES)} (kd: Hinton's tempered KL; dkd: Zhao et al.'s decoupled KD, mdistiller's form; lskd: KD on z-scored logits, Sun et al. 2024; mse: squared difference of centred logits). All work offline from soft label shards; top-k shards serve kd and dkd only.")] = "kd",
    dkd_alpha: Annotated[float | None, typer.Option(help="--loss dkd: weight of its target-class term (TCKD). \\[default: 1]", show_default=False)] = None,
    dkd_beta: Annotated[float | None, typer.Option(help="--loss dkd: weight of its non-target-class term (NCKD). \\[default: 8]", show_default=False)] = None,
    loss_warmup_epochs: Annotated[float | None, typer.Option(help="Ramp the distillation terms' weight linearly from 0 to 1 over this many epochs, per step (mdistiller's DKD warm-up). \\[default: dkd: 20, at most a quarter of --epochs; other losses: 0]", show_default=False)] = None,
    feature_loss: Annotated[str | None, typer.Option(autocompletion=lambda incomplete: [n for n in losses.FEATURE_LOSSES if n.startswith(incomplete)], help=f"Add a term comparing layers of the student and one live --teacher: {', '.join(losses.FEATURE_LOSSES)} (at: attention transfer; rkd: relational distances and angles; pkt: probabilistic knowledge transfer; sp: similarity-preserving; crd: contrastive representation distillation; hint: FitNets' hint through a regressor). With --alpha 0, RepDistiller's rows: CE plus the feature term.", show_default=False)] = None,
    feature_weight: Annotated[float | None, typer.Option(min=0.0, help="Weight of the feature term. \\[default: RepDistiller's: at 1000, rkd 1, pkt 30000, sp 3000, crd 0.8, hint 200 (its 100 on the plain MSE)]", show_default=False)] = None,
    student_layer: Annotated[list[str] | None, typer.Option(help="Student layer of the feature loss, by module path (dpl info --layers; 'features': the input of the final Linear); repeat for several, paired in order with --teacher-layer. \\[default: at: the stage outputs, as many in each net (the shallower's count); sp: the last stage output; rkd, pkt, crd: features; hint: the middle block]", show_default=False)] = None,
    teacher_layer: Annotated[list[str] | None, typer.Option(help="Teacher layer paired with each --student-layer, by module path in the teacher. \\[default: the loss's own, as for --student-layer]", show_default=False)] = None,
    crd_queue: Annotated[int | None, typer.Option(help="--feature-loss crd: past teacher embeddings kept as negatives (0: the batch's only). \\[default: 4096]", show_default=False)] = None,
    crd_dim: Annotated[int | None, typer.Option(help="--feature-loss crd: width of the embeddings. \\[default: 128]", show_default=False)] = None,
    crd_tau: Annotated[float | None, typer.Option(help="--feature-loss crd: temperature. \\[default: 0.07]", show_default=False)] = None,
    tau: Annotated[float | None, typer.Option(help="KD temperature. \\[default: the labels' own; 1 with --teacher]")] = None,
    alpha: Annotated[float | None, typer.Option(min=0.0, help="Weight of a live teacher's KD term on labeled samples. With --labels of a source's own labeled images: offline KD, each row learns its true label plus alpha times the loss against its stored target. \\[default: 1]", show_default=False)] = None,
    unlabeled_weight: Annotated[float | None, typer.Option(min=0.0, help="Weight of the pseudo-label term. \\[default: 1]", show_default=False)] = None,
    unlabeled_ratio: Annotated[float | None, typer.Option(help="Pseudo-labeled samples per labeled sample in each batch. \\[default: 3]", show_default=False)] = None,
    hard: Annotated[bool, typer.Option("--hard", help="Train on the argmax of soft labels.")] = False,
    min_confidence: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Keep pseudo-labels at least this confident.")] = None,
    balance: Annotated[int | None, typer.Option(min=1, help="Per class: keep the N most confident; duplicate a class with fewer.")] = None,
    bound_weight: Annotated[float | None, typer.Option(min=0.0, help="Detectors, --teacher: weight of Chen et al.'s teacher-bounded regression term (0: off). \\[default: 0.5]", show_default=False)] = None,
    bound_margin: Annotated[float | None, typer.Option(min=0.0, help="Detectors, --teacher: its margin m: the student's squared regression error counts where it exceeds the teacher's less m. \\[default: 0]", show_default=False)] = None,
    background_weight: Annotated[float | None, typer.Option(min=0.0, help="Detectors, --teacher: weight w0 of the background class in the soft cross-entropy (--alpha weighs that term, on the RoI classifier and the RPN objectness; --feature-loss hint adds the hint on backbone features). \\[default: 1.5]", show_default=False)] = None,
    scale_jitter: detect.ScaleJitter = None,
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
    """Train a student on labeled data plus pseudo-labels (--labels) or a live teacher (--teacher)."""
    options = dict(locals())
    if any(detect.is_detector(t) for t in teacher or []) or any(boxes.is_box_folder(f) for f in labels_dir or []):
        return detect.distill(options)
    if scale_jitter is not None or bound_weight is not None or bound_margin is not None or background_weight is not None:
        raise DplError("--scale-jitter, --bound-weight, --bound-margin and --background-weight are for detectors "
                       "(a --teacher detector or --labels of pseudo-boxes)")
    state = common.resume_spec("distill", options, resume, save_every)
    cfg, model_opts, noise = common.train_config(options), common.model_options(options), common.noise_options(options)
    opts = DistillOptions(loss=loss, tau=tau, alpha=alpha, unlabeled_weight=unlabeled_weight,
                          unlabeled_ratio=unlabeled_ratio, hard=hard, min_confidence=min_confidence, balance=balance,
                          dkd_alpha=dkd_alpha, dkd_beta=dkd_beta, loss_warmup_epochs=loss_warmup_epochs)
    features = FeatureOptions(loss=feature_loss, weight=feature_weight, student_layers=tuple(student_layer or ()),
                              teacher_layers=tuple(teacher_layer or ()), crd_queue=crd_queue, crd_dim=crd_dim,
                              crd_tau=crd_tau)
    val_opts, held = common.val_options(options), common.holdout(options)
    common.check_output(output, force)
    sinks = common.run_records(output, tensorboard)
    rt = train.runtime(device, compile, workers=workers)
    features.resolved(bool(labels_dir), len(teacher or []))    # refused before any work
    if len(labels_dir or []) > 1:
        return _experts(options, opts, cfg, model_opts, noise, rt, sinks, state)
    if head_names is not None:
        raise DplError("--head-names names the heads of a student of several --labels folders")
    labels_dir = labels_dir[0] if labels_dir else None
    teachers = list(teacher or [])
    labels = artifacts.read_labels(labels_dir, allow_partial) if labels_dir is not None else None
    source = source_meta(labels, teachers)
    spec, split, size = common.data_of(source, data_spec, common.partition(options), resize)
    channels = labels.meta["data"].get("channels") if labels is not None else None
    load = dict(download=download, resize=size, channels=channels, stream=stream, workers=workers)
    separate = labels is not None and not split.active
    teacher_meta = _teacher_data(labels, spec) if separate and labeled_data is None else None
    if separate and (labeled_data or teacher_meta):
        # Noisy Student proper: the labeled source and the unlabeled pool are two sources.
        labeled_spec, labeled_split, _ = common.data_of(teacher_meta or {}, labeled_data, common.partition(options), None)
        labeled_ds = data.load(labeled_spec, partition=labeled_split, part="labeled" if labeled_split.active else "all",
                               check_all=True, **load)
        pseudo_ds = data.load(spec, **load)
        if labeled_data is None:
            common.say(f"dpl: labeled data {labeled_ds.spec} ({labeled_ds.part}), as the teacher was trained; "
                       f"pseudo-labels of {pseudo_ds.spec}")
    elif split.active:
        labeled_ds = data.load(spec, partition=split, part="labeled", check_all=True, **load)
        pseudo_ds = data.load(spec, partition=split, part="unlabeled", **load)
    elif labels is not None:
        labeled_ds, pseudo_ds = None, data.load(spec, **load)
    else:
        labeled_ds, pseudo_ds = data.load(spec, check_all=True, **load), None
    if not separate:
        common.say_inherited("distills on", f"the labels {labels_dir}" if labels is not None else f"the teacher {teachers[0]}",
                             source, data_spec, common.partition(options), resize, pseudo_ds or labeled_ds)
    common.say_source(labeled_ds, "labeled ")
    common.say_source(pseudo_ds, "pseudo-labeled ")
    if held.active and labeled_ds is None:
        raise DplError("--val and --val-per-class hold out labeled samples, and this run has none "
                       "(give a partition, or --labeled-data)")
    labeled_ds, val_ds = data.hold_out(labeled_ds, held) if labeled_ds is not None else (None, None)
    with common.TrainingProgress("distill", sinks) as progress:
        result = distill(labeled_ds, pseudo_ds, labels, teachers, model_opts, noise, opts, cfg, rt,
                         common.test_split(labeled_ds or pseudo_ds), on_progress=progress, resume=state,
                         val=val_ds, val_opts=val_opts, features=features)
    common.write_result(output, result, state, keep_state)


def _teacher_data(labels: artifacts.Labels, spec: str) -> dict | None:
    """The teacher's checkpoint metadata, when its training data is another source than the labels' pool
    (then the student trains on that labeled data plus the pool's pseudo-labels); else None."""
    teacher = labels.meta["teachers"][0]
    try:
        meta = artifacts.read_header(Path(teacher["path"]), kind="checkpoint").meta
    except DplError:
        return None
    made = meta.get("data", {}).get("spec")
    # A multi-head student learnt on an unlabeled pool: it has no labeled training data of its own to take.
    if made is None or meta.get("heads") or data.parse_spec(made)[0] == data.parse_spec(spec)[0]:
        return None
    return meta


def _experts(o: dict, opts: DistillOptions, cfg: train.TrainConfig, model_opts, noise, rt: train.Runtime, sinks: list,
             state: train.ResumeSpec) -> None:
    """Several --labels: one student with a head per folder, on the pool they all label (core/experts.py)."""
    inapplicable = {"--teacher": o["teacher"], "--labeled-data": o["labeled_data"], "--labeled-per-class":
                    o["labeled_per_class"], "--labeled": o["labeled"], "--val": o["val"], "--val-per-class":
                    o["val_per_class"], "--keep best": o["keep"] == "best"}
    refused = [flag for flag, value in inapplicable.items() if value]
    if refused:
        raise DplError(f"{', '.join(refused)} cannot apply with several --labels: each head learns its expert's "
                       "labels on every image of the pool they label")
    labels = [artifacts.read_labels(f, o["allow_partial"]) for f in o["labels_dir"]]
    made = labels[0].meta["data"]
    spec, split, size = common.data_of(labels[0].meta, o["data_spec"], data.Partition(), o["resize"])
    pool = data.load(spec, partition=split, part=made.get("part", "all"), download=o["download"], resize=size,
                     channels=made.get("channels"), stream=o["stream"], check_all=True, workers=o["workers"])
    common.say(f"dpl: {len(labels)} heads on {pool.spec} ({pool.part}, {len(pool):,} images at "
               f"{'x'.join(map(str, pool.shape))})")
    names = o["head_names"].split(",") if o["head_names"] is not None else None
    with common.TrainingProgress("distill", sinks) as progress:
        result = experts.distill_experts(pool, labels, names, model_opts, noise, opts, cfg, rt, on_progress=progress,
                                         resume=state, download=o["download"])
    common.write_result(o["output"], result, state, o["keep_state"])
