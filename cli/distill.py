"""dpl distill: a student learns from labels, stored pseudo-labels, or live teachers, with noise."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dpl.cli import common
from dpl.cli.label import Resize, data_of
from dpl.cli.teach import (Arch, BatchSize, Crop, Dropout, Epochs, Flip, Init, Lr, Momentum, Optimizer,
                           RandAugment, Seed, StochasticDepth, Warmup, WeightDecay, test_split, train_config)
from dpl.core import DplError, artifacts, augment, data, train
from dpl.core.distill import DistillOptions, distill
from dpl.core.teach import ModelOptions, NoiseOptions


@common.guarded
def distill_command(
    output: common.Output,
    labels_dir: Annotated[Path | None, typer.Option("--labels", help="Label folder from dpl label (offline: the teacher is not run).")] = None,
    teacher: Annotated[list[Path] | None, typer.Option(help="Live teacher checkpoint (online KD); repeat for an ensemble.")] = None,
    data_spec: Annotated[str | None, typer.Option("--data", help="Training data. \\[default: the data the labels were made for]")] = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    download: common.Download = False,
    resize: Resize = None,
    tau: Annotated[float | None, typer.Option(help="KD temperature. \\[default: the labels' own; 1 with --teacher]")] = None,
    alpha: Annotated[float, typer.Option(min=0.0, help="Weight (lambda) of the KD term on labeled samples.")] = 1.0,
    unlabeled_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the pseudo-label term.")] = 1.0,
    unlabeled_ratio: Annotated[float, typer.Option(help="Pseudo-labeled samples per labeled sample in each batch.")] = 3.0,
    hard: Annotated[bool, typer.Option("--hard", help="Train on the argmax of soft labels.")] = False,
    min_confidence: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Keep pseudo-labels at least this confident.")] = None,
    balance: Annotated[int | None, typer.Option(min=1, help="Per class: keep the N most confident; duplicate a class with fewer.")] = None,
    arch: Arch = "cnn-m",
    epochs: Epochs = 30,
    batch_size: BatchSize = 128,
    lr: Lr = 0.05,
    optimizer: Optimizer = "sgd",
    momentum: Momentum = 0.9,
    weight_decay: WeightDecay = 5e-4,
    warmup_epochs: Warmup = 1.0,
    randaugment: RandAugment = None,
    crop: Crop = True,
    flip: Flip = True,
    dropout: Dropout = 0.0,
    stochastic_depth: StochasticDepth = 0.0,
    init: Init = None,
    seed: Seed = 0,
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
    state = common.resume_spec("distill", dict(locals()), resume, save_every)
    cfg = train_config(epochs, batch_size, lr, optimizer, momentum, weight_decay, warmup_epochs, seed)
    noise = NoiseOptions(augment.parse_randaugment(randaugment), crop, flip)
    opts = DistillOptions(tau, alpha, unlabeled_weight, unlabeled_ratio, hard, min_confidence, balance)
    opts.check()
    common.check_output(output, force)
    rt = train.runtime(device, compile, workers=workers)
    teachers = list(teacher or [])
    split = common.partition(labeled_per_class, labeled, split_seed)
    labels = artifacts.read_labels(labels_dir, allow_partial) if labels_dir is not None else None
    if labels is not None:
        spec, split, resize = data_of(labels.meta, data_spec, split, resize)
    elif teachers:
        spec, split, resize = data_of(artifacts.read_header(teachers[0], kind="checkpoint").meta, data_spec, split, resize)
    else:
        raise DplError("distill needs --labels DIR or --teacher CKPT (dpl teach trains on labels alone)")
    if split.active:
        labeled_ds = data.load(spec, partition=split, part="labeled", download=download)
        pseudo_ds = data.load(spec, partition=split, part="unlabeled", download=download)
    elif labels is not None:
        labeled_ds, pseudo_ds = None, data.load(spec, download=download)
    else:
        labeled_ds, pseudo_ds = data.load(spec, download=download), None
    labeled_ds, pseudo_ds = common.sized(labeled_ds, resize), common.sized(pseudo_ds, resize)
    with common.TrainingProgress("distill") as progress:
        result = distill(labeled_ds, pseudo_ds, labels, teachers, ModelOptions(arch, dropout, stochastic_depth, init),
                         noise, opts, cfg, rt, common.sized(test_split(labeled_ds or pseudo_ds), resize), on_progress=progress, resume=state)
    common.write_result(output, result, state, keep_state)
