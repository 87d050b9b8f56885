"""Supervised training of a model on labeled data: the objective of `dpl teach`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import DplError, losses
from ..data import augment
from ..data import Dataset
from .common import (
    ModelOptions, NoiseOptions, Trained, ValOptions, checkpoint_meta, input_of, kept_epoch, make_model, test_metrics,
    train_record
)
from ..engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch


@dataclass(frozen=True, kw_only=True)
class TeachOptions:
    label_smoothing: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise DplError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")


def supervised_objective(model: nn.Module, labels: torch.Tensor, input_meta: dict, noise: augment.Noise,
                         rt: Runtime, label_smoothing: float = 0.0):
    def step(batch: tuple[torch.Tensor, torch.Tensor]):
        idx, images = batch
        x = augment.to_input(augment.apply(images, noise), input_meta["mean"], input_meta["std"], rt.cuda)
        y = labels[idx]
        logits = model(x)
        return {"ce": losses.cross_entropy(logits, y, label_smoothing)}, {"acc": losses.accuracy(logits, y)}
    return step


def teach(train: Dataset, test: Dataset | None, model_opts: ModelOptions, noise_opts: NoiseOptions,
          cfg: TrainConfig, rt: Runtime, opts: TeachOptions = TeachOptions(),
          on_progress: Progress | None = None, resume: ResumeSpec | None = None, val: Dataset | None = None,
          val_opts: ValOptions = ValOptions()) -> Trained:
    """Train on `train`; `val` (held out of it by data.hold_out) is measured as `val_opts` says."""
    if len(train) == 0:
        raise DplError(f"{train.spec}: no samples to train on")
    if (train.labels < 0).any():
        raise DplError(f"{train.spec}: teach needs labels for every sample (this split has unlabeled ones)")
    seed_everything(cfg.seed)
    model, spec, parents = make_model(model_opts, train)
    model = rt.prepare(model)
    input_meta = input_of(train)
    noise = noise_opts.for_data(train)
    objective = supervised_objective(rt.compiled(model), train.labels.to(rt.device), input_meta, noise, rt,
                                     opts.label_smoothing)
    batch_size = min(cfg.batch_size, len(train))
    history = fit(model, objective, rt.place(train.images).shuffled(batch_size, cfg.seed),
                  steps_per_epoch(len(train), batch_size), cfg, rt, on_progress, resume, batch_images=batch_size,
                  validation=val_opts.validation(model, val, input_meta, rt))
    kept = kept_epoch(history, val_opts)
    metrics = {"train_loss": kept["loss"], "train_acc": kept["acc"], **test_metrics(model, test, input_meta, rt)}
    meta = checkpoint_meta(spec, train, parents, cfg, train_record(cfg, batch_size, noise, label_smoothing=opts.label_smoothing),
                           metrics, history, val, val_opts)
    return Trained(model.cpu(), meta, history)
