"""Supervised training of a model on labeled data: the objective of `dpl teach`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dpl.core import DplError, artifacts, augment, evaluate, models
from dpl.core.data import Dataset
from dpl.core.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch


@dataclass(frozen=True)
class ModelOptions:
    arch: str = "cnn-m"
    dropout: float = 0.0
    stochastic_depth: float = 0.0
    init: Path | None = None
    pretrained: bool = False        # torchvision's ImageNet weights (not part of the arch: a rebuild loads none)


@dataclass(frozen=True)
class NoiseOptions:
    randaugment: tuple[int, int] | None = None
    crop: bool = True
    flip: bool = True

    def for_data(self, ds: Dataset) -> augment.Noise:
        pad = max(1, ds.shape[1] // 8) if self.crop else 0
        return augment.Noise(crop_pad=pad, hflip=self.flip and ds.hflip, randaugment=self.randaugment)


@dataclass
class Trained:
    model: nn.Module
    meta: dict                      # checkpoint metadata
    history: list[dict] = field(default_factory=list)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)   # objective state kept beside the model


def train_record(cfg: TrainConfig, batch_size: int, noise: augment.Noise | None, **extra) -> dict:
    """The `train` entry of a checkpoint's metadata: the schedule and the noise a run used (none: a
    pretext task, whose transforms are recorded with the task)."""
    record = {"epochs": cfg.epochs, "batch_size": batch_size, "lr": cfg.lr, "optimizer": cfg.optimizer,
              "weight_decay": cfg.weight_decay}
    if noise is not None:
        record.update({"randaugment": list(noise.randaugment) if noise.randaugment else None,
                       "crop_pad": noise.crop_pad, "hflip": noise.hflip})
    return {**record, **extra}


def make_model(opts: ModelOptions, ds: Dataset) -> tuple[nn.Module, dict, list[dict]]:
    """Build the model for this data, loading --pretrained or --init weights if given. Returns model, arch, parents."""
    if opts.pretrained and opts.init is not None:
        raise DplError("give --pretrained or --init, not both")
    c, h, w = ds.shape
    if h != w:
        raise DplError(f"{ds.spec}: images must be square, got {h}x{w}")
    # An unlabeled pool (dpl pretrain on a folder of photos) gets a one-class head that fine-tuning replaces.
    spec = models.arch_spec(opts.arch, num_classes=max(1, ds.num_classes), in_channels=c, image_size=h,
                            dropout=opts.dropout, stochastic_depth=opts.stochastic_depth)
    model = models.build(spec)
    parents = []
    if opts.pretrained:
        weights = models.load_pretrained(model, spec["name"])
        parents.append({"role": "pretrained", "path": weights.url, "sha256": artifacts.sha256_file(weights.file)})
    if opts.init is not None:
        init = artifacts.load_checkpoint(opts.init)
        state = init.model_state()
        if init.num_classes != ds.num_classes:
            # A backbone made on other data (dpl pretrain): everything but the classifier, which starts afresh.
            fc = models.feature_layer(model) + "."
            state = {k: v for k, v in state.items() if not k.startswith(fc)}
            state.update({k: v for k, v in model.state_dict().items() if k.startswith(fc)})
            init = replace(init, meta={**init.meta, "num_classes": ds.num_classes})
        check_input(init, ds, opts.init)
        artifacts.load_state(model, state, opts.init)
        parents.append({"role": "init", "path": str(opts.init), "sha256": init.sha256()})
    return model, spec, parents


def check_input(ckpt: artifacts.Checkpoint, ds: Dataset, path) -> None:
    """The checkpoint must take this data's images and predict its classes."""
    expected = (ckpt.input["channels"], ckpt.input["size"], ckpt.input["size"])
    if tuple(ds.shape) != expected:
        raise DplError(f"{path}: the model takes {'x'.join(map(str, expected))} images, "
                       f"{ds.spec} has {'x'.join(map(str, ds.shape))}")
    if ds.num_classes and ckpt.num_classes != ds.num_classes:     # an unlabeled pool has no classes of its own
        raise DplError(f"{path}: the model predicts {ckpt.num_classes} classes, {ds.spec} has {ds.num_classes}")


def supervised_objective(model: nn.Module, labels: torch.Tensor, input_meta: dict,
                         noise: augment.Noise, rt: Runtime, label_smoothing: float = 0.0):
    def step(batch: tuple[torch.Tensor, torch.Tensor]):
        idx, images = batch
        x = augment.to_input(augment.apply(images, noise), input_meta["mean"], input_meta["std"], rt.cuda)
        y = labels[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        return loss, {"acc": (logits.argmax(1) == y).float().mean()}
    return step


def teach(train: Dataset, test: Dataset | None, model_opts: ModelOptions, noise_opts: NoiseOptions,
          cfg: TrainConfig, rt: Runtime, label_smoothing: float = 0.0,
          on_progress: Progress | None = None, resume: ResumeSpec | None = None) -> Trained:
    if len(train) == 0:
        raise DplError(f"{train.spec}: no samples to train on")
    if (train.labels < 0).any():
        raise DplError(f"{train.spec}: teach needs labels for every sample (this split has unlabeled ones)")
    if not 0.0 <= label_smoothing < 1.0:
        raise DplError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
    seed_everything(cfg.seed)
    model, spec, parents = make_model(model_opts, train)
    model = rt.prepare(model)
    mean, std = train.normalization
    input_meta = artifacts.input_meta(train.shape[0], train.shape[1], mean, std)
    noise = noise_opts.for_data(train)
    objective = supervised_objective(rt.compiled(model), train.labels.to(rt.device), input_meta, noise, rt, label_smoothing)
    batch_size = min(cfg.batch_size, len(train))
    history = fit(model, objective, rt.place(train.images).shuffled(batch_size, cfg.seed),
                  steps_per_epoch(len(train), batch_size), cfg, rt, on_progress, resume)
    metrics = {"train_loss": history[-1]["loss"], "train_acc": history[-1]["acc"]}
    if test is not None:
        logits = evaluate.predict(model, test.images, input_meta, rt)
        m = evaluate.classification_metrics(logits, test.labels, test.num_classes)
        metrics.update({"test_top1": m["top1"], "test_nll": m["nll"], "test_ece": m["ece"], "test_spec": test.spec})
    meta = {
        "arch": spec, "num_classes": train.num_classes, "classes": train.classes, "input": input_meta,
        "data": train.describe(), "parents": parents, "metrics": metrics, "seed": cfg.seed,
        "train": train_record(cfg, batch_size, noise, label_smoothing=label_smoothing),
    }
    return Trained(model.cpu(), meta, history)
