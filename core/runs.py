"""What every training command shares: the model it starts from, the noise it trains under, and the record
its checkpoint keeps. The objectives (teach, distill, hint, pretext) build on this module, never on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from . import DplError, artifacts, augment, evaluate, models
from .data import Dataset
from .train import Runtime, TrainConfig


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    arch: str = "cnn-m"
    dropout: float = 0.0
    stochastic_depth: float = 0.0
    init: Path | None = None
    pretrained: bool = False        # torchvision's ImageNet weights (not part of the arch: a rebuild loads none)

    def __post_init__(self):
        if self.pretrained and self.init is not None:
            raise DplError("give --pretrained or --init, not both")


@dataclass(frozen=True, kw_only=True)
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
    objective: dict[str, torch.Tensor] = field(default_factory=dict)   # objective state kept beside the model


def input_of(ds: Dataset) -> dict:
    """The `input` entry of a checkpoint: what the model takes, and the normalization it was trained with."""
    mean, std = ds.normalization
    return artifacts.input_meta(ds.shape[0], ds.shape[1], mean, std)


def make_model(opts: ModelOptions, ds: Dataset) -> tuple[nn.Module, dict, list[dict]]:
    """Build the model for this data, loading --pretrained or --init weights if given. Returns model, arch, parents."""
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
        parents.append(_load_init(model, opts.init, ds))
    return model, spec, parents


def _load_init(model: nn.Module, path: Path, ds: Dataset) -> dict:
    init = artifacts.load_checkpoint(path)
    state = init.model_state()
    if init.num_classes != ds.num_classes:
        # A backbone made on other data (dpl pretrain): everything but the classifier, which starts afresh.
        fc = models.feature_layer(model) + "."
        state = {k: v for k, v in state.items() if not k.startswith(fc)}
        state.update({k: v for k, v in model.state_dict().items() if k.startswith(fc)})
        init = replace(init, meta={**init.meta, "num_classes": ds.num_classes})
    check_input(init, ds, path)
    artifacts.load_state(model, state, path)
    return {"role": "init", "path": str(path), "sha256": init.sha256()}


def check_input(ckpt: artifacts.Checkpoint, ds: Dataset, path) -> None:
    """The checkpoint must take this data's images and predict its classes."""
    expected = (ckpt.input["channels"], ckpt.input["size"], ckpt.input["size"])
    if tuple(ds.shape) != expected:
        raise DplError(f"{path}: the model takes {'x'.join(map(str, expected))} images, "
                       f"{ds.spec} has {'x'.join(map(str, ds.shape))}")
    if ds.num_classes and ckpt.num_classes != ds.num_classes:     # an unlabeled pool has no classes of its own
        raise DplError(f"{path}: the model predicts {ckpt.num_classes} classes, {ds.spec} has {ds.num_classes}")


def load_teachers(paths: list[Path], ds: Dataset) -> list[artifacts.Checkpoint]:
    """Teacher checkpoints that take this data's images and predict its classes."""
    checkpoints = [artifacts.load_checkpoint(p) for p in paths]
    for p, ckpt in zip(paths, checkpoints):
        check_input(ckpt, ds, p)
    return checkpoints


def parent(role: str, path: Path, sha256: str) -> dict:
    return {"role": role, "path": str(path), "sha256": sha256}


def train_record(cfg: TrainConfig, batch_size: int, noise: augment.Noise | None, **extra) -> dict:
    """The `train` entry of a checkpoint's metadata: the schedule and the noise a run used (none: a
    pretext task, whose transforms are recorded with the task)."""
    record = {"epochs": cfg.epochs, "batch_size": batch_size, "lr": cfg.lr, "optimizer": cfg.optimizer,
              "weight_decay": cfg.weight_decay}
    if noise is not None:
        record.update({"randaugment": list(noise.randaugment) if noise.randaugment else None,
                       "crop_pad": noise.crop_pad, "hflip": noise.hflip})
    return {**record, **extra}


def test_metrics(model: nn.Module, test: Dataset | None, input_meta: dict, rt: Runtime) -> dict:
    """top1, NLL and ECE on the source's test split, for the checkpoint's metrics (none without a test split)."""
    if test is None:
        return {}
    logits = evaluate.predict(model, test.images, input_meta, rt)
    m = evaluate.classification_metrics(logits, test.labels, test.num_classes)
    return {"test_top1": m["top1"], "test_nll": m["nll"], "test_ece": m["ece"], "test_spec": test.spec}


def checkpoint_meta(spec: dict, ds: Dataset, parents: list[dict], cfg: TrainConfig, train: dict,
                    metrics: dict, **sections) -> dict:
    """A trained model's checkpoint metadata: what it is and takes, what it learnt from, how, and how well;
    `sections` add the objective's own entries (distill, hint, pretext, ...)."""
    return {"arch": spec, "num_classes": spec["num_classes"], "classes": ds.classes, "input": input_of(ds),
            "data": ds.describe(), "parents": parents, "metrics": metrics, "seed": cfg.seed, "train": train,
            **sections}
