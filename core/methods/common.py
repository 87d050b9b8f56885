"""What every training command shares: the model it starts from, the noise it trains under, and the record
its checkpoint keeps. The objectives (teach, distill, hint, pretext) build on this module, never on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .. import DplError, artifacts, models
from ..data import augment
from ..reporting import evaluate
from ..data import Dataset
from ..engine.train import Runtime, TrainConfig, Validation, best_epoch


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


@dataclass(frozen=True, kw_only=True)
class ValOptions:
    """How a run uses its validation set: every `every` epochs (and after the last), and which weights it
    keeps. "last" is the default: the weights the schedule ends on (the cosine decay is built for them), the
    same with or without a validation set; "best" picks the epoch of the best validation top-1."""

    every: int = 1
    keep: str = "last"

    def __post_init__(self):
        if self.keep not in ("best", "last"):
            raise DplError(f"--keep must be best or last, got {self.keep!r}")
        if self.every < 1:
            raise DplError(f"--val-every must be at least 1, got {self.every}")

    def validation(self, model: nn.Module, val: Dataset | None, input_meta: dict, rt: Runtime) -> Validation | None:
        if val is None:
            if self.keep == "best":
                raise DplError("--keep best picks an epoch by its validation accuracy: give --val or --val-per-class")
            return None

        def measure() -> dict:
            logits = evaluate.predict(model, val.images, input_meta, rt)
            return evaluate.classification_metrics(logits, val.labels, val.num_classes)
        return Validation(measure, self.every, self.keep == "best")


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
        if "heads" in ckpt.meta:      # its logits are several distributions, not one
            raise DplError(f"{p}: a student with {len(ckpt.meta['heads'])} heads cannot teach as one classifier: "
                           "label with it (dpl label writes a folder per head) and distill from a head's folder")
        check_input(ckpt, ds, p)
    return checkpoints


def parent(role: str, path: Path, sha256: str) -> dict:
    return {"role": role, "path": str(path), "sha256": sha256}


def train_record(cfg: TrainConfig, batch_size: int, noise: augment.Noise | None, **extra) -> dict:
    """The `train` entry of a checkpoint's metadata: the schedule and the noise a run used (none: a
    pretext task, whose transforms are recorded with the task), the warmup used (`TrainConfig.warmup`), and
    the EMA decay where there was one."""
    record = {"epochs": cfg.epochs, "batch_size": batch_size, "lr": cfg.lr, "optimizer": cfg.optimizer,
              "weight_decay": cfg.weight_decay, "warmup_epochs": cfg.warmup,
              **({"ema": cfg.ema} if cfg.ema is not None else {})}
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
                    metrics: dict, history: list[dict], val: Dataset | None = None,
                    val_opts: ValOptions = ValOptions(), **sections) -> dict:
    """A trained model's checkpoint metadata: what it is and takes, what it learnt from, how, how well, its
    per-epoch history (the scalars: per-class vectors, which grow with the classes, stay in the metrics log)
    and which epoch's weights it holds; `sections` add the objective's own entries (distill, hint, pretext, ...)."""
    record = {"arch": spec, "num_classes": spec["num_classes"], "classes": ds.classes, "input": input_of(ds),
              "data": ds.describe(), "parents": parents, "metrics": metrics, "seed": cfg.seed, "train": train,
              "history": [{k: v for k, v in h.items() if not isinstance(v, list)} for h in history],
              "weights": weights_record(history, cfg, val_opts)}
    if val is not None:
        record["val"] = {**val.describe(), "every": val_opts.every}
    return {**record, **sections}


def kept_epoch(history: list[dict], val_opts: ValOptions) -> dict:
    """The record of the epoch whose weights the run ends with (`train.fit` restores the best with --keep best)."""
    best = best_epoch(history)
    return best if val_opts.keep == "best" and best is not None else (history[-1] if history else {})


def weights_record(history: list[dict], cfg: TrainConfig, val_opts: ValOptions) -> dict:
    """Which epoch's weights a checkpoint holds, and the validation figures of the best and the last epoch;
    with --ema, `ema` (the decay) says the weights are that epoch's EMA, which the figures measured (the raw
    weights are not kept)."""
    best, last, kept = best_epoch(history), history[-1] if history else {}, kept_epoch(history, val_opts)
    figures = lambda h: {k: h[k] for k in ("val_top1", "val_nll", "val_ece") if k in h}    # noqa: E731
    return {"kept": val_opts.keep, "epoch": kept.get("epoch", 0), "epochs": cfg.epochs,
            **({"ema": cfg.ema} if cfg.ema is not None else {}),
            "best_epoch": best["epoch"] if best else None, "best": figures(best) if best else {},
            "last": figures(last)}
