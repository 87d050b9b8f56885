"""What every training command shares: the model it starts from, the noise it trains under, how a step mixes
its labeled and pseudo-labeled (or unlabeled) rows (`Mix`), how hooks come off (`hooked`, `HookedObjective`),
and the record its checkpoint keeps (`checkpoint_meta`, the one writer of a trained model's metadata). The
objectives build on this module, never on each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .. import DplError, artifacts, models
from ..data import augment, images as image_files
from ..reporting import evaluate
from ..data import Dataset
from ..engine import distributed
from ..engine.train import Runtime, TrainConfig, Validation, best_epoch, paired_indices


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
    same with or without a validation set; "best" picks the epoch of the best validation `metric` (the task's:
    core.tasks.Task.best)."""

    every: int = 1
    keep: str = "last"
    metric: str = "top1"

    def __post_init__(self):
        if self.keep not in ("best", "last"):
            raise DplError(f"--keep must be best or last, got {self.keep!r}")
        if self.every < 1:
            raise DplError(f"--val-every must be at least 1, got {self.every}")

    def validation(self, model: nn.Module, val: Dataset | None, input_meta: dict, rt: Runtime) -> Validation | None:
        """A classifier's validation: top-1, NLL and ECE of `val`."""
        def measure() -> dict:
            logits = evaluate.predict(model, val.images, input_meta, rt)
            return evaluate.classification_metrics(logits, val.labels, val.num_classes)
        return self.measured(measure if val is not None else None)

    def measured(self, measure: Callable[[], dict] | None, logged: tuple[str, ...] | None = None) -> Validation | None:
        """The validation of any task: `measure()` gives its figures, of which `fit` logs `logged` (by default
        the classifier's), among them `metric`; None without held-out data, which --keep best refuses."""
        if measure is None:
            if self.keep == "best":
                raise DplError(f"--keep best picks an epoch by its validation {self.metric}: give --val"
                               + (" or --val-per-class" if self.metric == "top1" else ""))
            return None
        return Validation(measure, self.every, self.keep == "best", self.metric, logged or ("top1", "nll", "ece"))


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


def input_of_images(images: torch.Tensor) -> dict:
    """The `input` entry of a model of uint8 images (N, C, S, S) that are not a `Dataset` (images with boxes):
    their channels, side, and normalization."""
    mean, std = image_files.normalization(images)
    return artifacts.input_meta(images.shape[1], images.shape[2], mean, std)


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


def checkpoint_meta(spec: dict, ds: Dataset | None, parents: list[dict], cfg: TrainConfig, train: dict,
                    metrics: dict, history: list[dict], val=None, val_opts: ValOptions = ValOptions(), *,
                    task: str | None = None, data: dict | None = None, classes: list[str] | None = None,
                    input_meta: dict | None = None, **sections) -> dict:
    """A trained model's checkpoint metadata, written for every objective here and nowhere else: what it is
    (`task`, recorded where it is not a classifier) and takes (`input_meta`), what it learnt from (`data`, a
    data record, and `classes`), how, how well, its per-epoch history (the scalars: per-class vectors, which grow
    with the classes, stay in the metrics log) and which epoch's weights it holds; `sections` add the objective's
    own entries (distill, hint, pretext, mil, wsddn, detect, ...). A classifier's `ds` gives the data record,
    classes and input where they are not given (a detector, MIL's bags and WSDDN give theirs). `val`, held-out
    data that `describe()`s itself, is recorded as `meta["val"]`; held-out images with boxes are counted in the
    `train` record instead (`held_out`)."""
    record = {**({"task": task} if task is not None else {}),
              "arch": spec, "num_classes": spec["num_classes"], "classes": ds.classes if classes is None else classes,
              "input": input_of(ds) if input_meta is None else input_meta,
              "data": ds.describe() if data is None else data, "parents": parents, "metrics": metrics,
              "seed": cfg.seed, "train": train,
              "history": [{k: v for k, v in h.items() if not isinstance(v, list)} for h in history],
              "weights": weights_record(history, cfg, val_opts)}
    if val is not None:
        record["val"] = {**val.describe(), "every": val_opts.every}
    return {**record, **sections}


def held_out(val, val_opts: ValOptions) -> dict:
    """The `val` entry of a `train` record where the held-out data is images with boxes (a detector's, WSDDN's):
    how many, and how often they were measured; nothing without them."""
    return {"val": {"images": len(val), "every": val_opts.every}} if val is not None else {}


def kept_epoch(history: list[dict], val_opts: ValOptions) -> dict:
    """The record of the epoch whose weights the run ends with (`train.fit` restores the best with --keep best)."""
    best = best_epoch(history, val_opts.metric)
    return best if val_opts.keep == "best" and best is not None else (history[-1] if history else {})


def weights_record(history: list[dict], cfg: TrainConfig, val_opts: ValOptions) -> dict:
    """Which epoch's weights a checkpoint holds, and the validation figures of the best and the last epoch;
    with --ema, `ema` (the decay) says the weights are that epoch's EMA, which the figures measured (the raw
    weights are not kept)."""
    best, last = best_epoch(history, val_opts.metric), history[-1] if history else {}
    kept = kept_epoch(history, val_opts)
    figures = lambda h: {k: v for k, v in h.items() if k.startswith("val_") and k != "val_seconds"}    # noqa: E731
    return {"kept": val_opts.keep, "epoch": kept.get("epoch", 0), "epochs": cfg.epochs, "metric": val_opts.metric,
            **({"ema": cfg.ema} if cfg.ema is not None else {}),
            "best_epoch": best["epoch"] if best else None, "best": figures(best) if best else {},
            "last": figures(last)}


# ---- the one batch mixer ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mix:
    """How each step's batch is made from two parts: `labeled` rows of the labeled part (true labels), then
    `pseudo` rows of the other part (pseudo-labeled: distill, experts, a detector's balanced offline steps; or
    unlabeled: semi), for `steps` steps an epoch, per rank (--batch-size is per rank). Each part is drawn from its
    own seeded index stream (`train.paired_indices`), so a part smaller than the epoch's draw recurs evenly and
    what a global step sees does not depend on the world size. `n_labeled` and `n_pseudo` are the parts' sizes."""

    labeled: int
    pseudo: int
    steps: int
    n_labeled: int = 0
    n_pseudo: int = 0

    @staticmethod
    def plan(n_labeled: int, n_pseudo: int, batch_size: int, ratio: float) -> Mix:
        """`batch_size` labeled rows and `ratio` times as many of the other part, an epoch one pass over the other
        part; one part alone: `batch_size` of it, an epoch one pass over it."""
        if n_labeled and n_pseudo:
            b_l = min(batch_size, n_labeled)
            b_u = max(1, round(ratio * b_l))
            steps = n_pseudo // b_u
        elif n_labeled:
            b_l, b_u = min(batch_size, n_labeled), 0
            steps = n_labeled // b_l
        else:
            b_l, b_u = 0, min(batch_size, n_pseudo)
            steps = n_pseudo // b_u
        return Mix(b_l, b_u, max(1, steps // distributed.rank_world()[1]), n_labeled, n_pseudo)

    @property
    def rows(self) -> int:
        """The rows of one step (this rank's)."""
        return self.labeled + self.pseudo

    def indices(self, seed: int, epoch: int, device) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """(labeled indices, indices of the other part) of each step of `epoch`, this rank's; None for a part a step
        takes none of."""
        return paired_indices(self.n_labeled, self.labeled, self.n_pseudo, self.pseudo, self.steps, seed, epoch,
                              device)

    def batches(self, feed, seed: int, device) -> Callable[[int], Iterator]:
        """`batches(epoch)` for fit: ((labeled indices, other indices), the images of both, labeled first), from a
        `Feed` of (labeled images, the other part's images[, which image each row of the other part stands for])."""
        return lambda epoch: feed(self.indices(seed, epoch, device), gather_parts)


def gather_parts(batch, labeled_images, pseudo_images, image_of_row: torch.Tensor | None = None) -> torch.Tensor:
    """The images of a `Mix` step (`Feed`'s gather): the labeled rows', then the other part's (through
    `image_of_row` where its rows are not its images: label rows selected, balanced or repeated)."""
    il, iu = batch
    parts = [] if il is None else [labeled_images[il]]
    if iu is not None:
        parts.append(pseudo_images[iu if image_of_row is None else image_of_row[iu]])
    return torch.cat(parts)


# ---- hooks: one lifecycle ----------------------------------------------------------------------------------

class HookedObjective:
    """An objective whose hooks (`models.Taps`) sit on the modules it trains: called as the objective, and a
    context manager that takes the hooks off, like every holder of hooks in core/methods (`models.Taps`,
    `features.FeatureTerm`, `distill.Teachers`): each is built with its hooks on and used in a `with` around
    `train.fit`, so the trained model runs whole once the run ends, however it ends."""

    def __init__(self, step: Callable, *taps: models.Taps):
        self.step, self.taps = step, taps

    def __call__(self, batch):
        return self.step(batch)

    def __enter__(self) -> HookedObjective:
        return self

    def __exit__(self, *exc) -> None:
        for t in self.taps:
            t.remove()


def hooked(*holders) -> contextlib.ExitStack:
    """One `with` over a run's holders of hooks (None: a holder the run does not have)."""
    stack = contextlib.ExitStack()
    for h in holders:
        if h is not None:
            stack.enter_context(h)
    return stack
