"""Training a detector: on true boxes (`teach`), and offline on true plus pseudo-boxes (`distill_pseudo`, pooled
into one stream or balanced steps); `trained`, the checkpoint of every detector objective (Chen et al.'s too)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ... import DplError
from ...data import augment
from ...data.boxes import Boxes
from ...data.scenes import BoxData
from ..common import (
    Mix, ModelOptions, Trained, ValOptions, checkpoint_meta, held_out, input_of_images, train_record
)
from ...engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch
from .model import TASK, TERMS, VAL, make_detector, measure, targets_of, to_model, validation_of
from .noise import BoxNoise


# ---- teaching: supervised training on boxes --------------------------------------------------------------

def detection_objective(model: nn.Module, truth: Boxes, input_meta: dict, noise: BoxNoise, rt: Runtime):
    """Faster R-CNN's own four losses (RPN objectness and box, RoI class and box) on noised images and boxes."""
    def step(batch):
        idx, images = batch
        x, targets = noise.apply(images, targets_of(truth, idx, rt.device))
        found = model(augment.to_input(x, input_meta["mean"], input_meta["std"], rt.cuda), to_model(targets))
        return {TERMS[k]: v for k, v in found.items()}, {}
    return step


def teach(train: BoxData, test: BoxData | None, model_opts: ModelOptions, noise: BoxNoise, cfg: TrainConfig,
          rt: Runtime, on_progress: Progress | None = None, resume: ResumeSpec | None = None,
          parents: list[dict] = (), val: BoxData | None = None, val_opts: ValOptions = VAL, **sections) -> Trained:
    """Train a detector on `train`'s boxes (Faster R-CNN's losses through `train.fit`); `val` is measured during
    training (mAP, --keep best), `test` once trained, for the checkpoint's metrics."""
    if len(train) == 0:
        raise DplError("no images to train the detector on")
    seed_everything(cfg.seed)
    model, spec, own = make_detector(model_opts, train.images, train.truth, train.classes)
    model = rt.prepare(model)
    input_meta = input_of_images(train.images)
    batch_size = min(cfg.batch_size, len(train))
    history = fit(model, detection_objective(model, train.truth, input_meta, noise, rt),
                  rt.place(train.images).shuffled(batch_size, cfg.seed), steps_per_epoch(len(train), batch_size),
                  cfg, rt, on_progress, resume, batch_images=batch_size,
                  validation=validation_of(model, val, input_meta, rt, val_opts))
    return trained(model, spec, train, test, input_meta, [*own, *parents], cfg, batch_size, noise, history, rt,
                   val=val, val_opts=val_opts, **sections)


def trained(model, spec, train: BoxData, test: BoxData | None, input_meta: dict, parents: list[dict], cfg, batch_size,
            noise: BoxNoise, history: list[dict], rt: Runtime, objective: dict | None = None,
            val: BoxData | None = None, val_opts: ValOptions = VAL, **sections) -> Trained:
    """A trained detector and its checkpoint: mAP on `test`, and its metadata through `common.checkpoint_meta`
    (task `detector`, the boxes' data record and classes)."""
    metrics = {"train_loss": history[-1]["loss"]}
    if test is not None:
        m = measure(model, test.images, test.truth, test.classes, input_meta, rt)
        metrics.update(test_map=m["map"], test_map50=m["map50"], test_spec=test.record.get("spec"))
    record = {**train_record(cfg, batch_size, None, **noise.record()), **held_out(val, val_opts)}
    meta = checkpoint_meta(spec, None, list(parents), cfg, record, metrics, history, val_opts=val_opts, task=TASK,
                           data=train.record, classes=train.classes, input_meta=input_meta, **sections)
    return Trained(model.cpu(), meta, history, objective or {})


# ---- the offline student's step: labeled and pseudo-labeled images, each part weighed ------------------------

@dataclass(frozen=True, kw_only=True)
class PseudoOptions:
    """How the offline student takes its pseudo-labeled images. Balanced (STAC, Unbiased Teacher): each step takes
    --batch-size labeled images and `ratio` pseudo-labeled ones per labeled one, in a forward pass of their own whose
    detector's losses are weighted `weight`. Pooled (both None): one shuffled stream of both parts, every image
    alike, where 100 labeled images are drowned by 900 pseudo-labeled ones."""

    ratio: float | None = None          # pseudo-labeled images per labeled image in a step [3 when balanced]
    weight: float | None = None         # weight of the pseudo-labeled images' losses [1]

    def __post_init__(self):
        if self.ratio is not None and not (self.ratio > 0 and math.isfinite(self.ratio)):
            raise DplError(f"--unlabeled-ratio must be a finite number > 0, got {self.ratio}")
        if self.weight is not None and not (self.weight >= 0 and math.isfinite(self.weight)):
            raise DplError(f"--unlabeled-weight must be a finite number >= 0, got {self.weight}")

    @property
    def pooled(self) -> bool:
        return self.ratio is None and self.weight is None

    def record(self) -> dict:
        if self.pooled:
            return {"steps": "pooled"}
        return {"steps": "balanced", "unlabeled_ratio": 3.0 if self.ratio is None else self.ratio,
                "unlabeled_weight": 1.0 if self.weight is None else self.weight}


def pseudo_objective(model: nn.Module, truth: Boxes, n_labeled: int, input_meta: dict, noise: BoxNoise,
                     opts: PseudoOptions, rt: Runtime):
    """The labeled images' detector losses, plus those of the pseudo-labeled images (rows `n_labeled` on of
    `truth`) from a second forward pass, weighted and named pseudo_*."""
    weight = 1.0 if opts.weight is None else opts.weight

    def step(batch):
        (il, iu), images = batch
        parts = [(p, i) for p, i in (("", il), ("pseudo_", None if iu is None else iu + n_labeled)) if i is not None]
        x, targets = noise.apply(images, targets_of(truth, torch.cat([i for _, i in parts]), rt.device))
        terms, start = {}, 0
        for prefix, idx in parts:
            stop = start + len(idx)
            found = model(augment.to_input(x[start:stop], input_meta["mean"], input_meta["std"], rt.cuda),
                          to_model(targets[start:stop]))
            terms.update({prefix + TERMS[k]: (weight * v if prefix else v) for k, v in found.items()})
            start = stop
        return terms, {}
    return step


def distill_pseudo(train: BoxData, n_labeled: int, test: BoxData | None, model_opts: ModelOptions, noise: BoxNoise,
                   opts: PseudoOptions, cfg: TrainConfig, rt: Runtime, on_progress: Progress | None = None,
                   resume: ResumeSpec | None = None, parents: list[dict] = (), val: BoxData | None = None,
                   val_opts: ValOptions = VAL, **sections) -> Trained:
    """The offline student on `train` (its first `n_labeled` images labeled, the rest pseudo-labeled, as
    `with_pseudo_boxes` makes it), pooled or balanced (`PseudoOptions`)."""
    if opts.ratio is not None and not 0 < n_labeled < len(train):
        raise DplError("--unlabeled-ratio mixes labeled and pseudo-labeled images, and this run has only "
                       f"{'labeled' if n_labeled else 'pseudo-labeled'} ones")
    if not opts.pooled and n_labeled == len(train):
        raise DplError("no pseudo-labeled image keeps a box at this --min-confidence: there is no pseudo part to "
                       "weigh (--unlabeled-weight)")
    if opts.pooled:
        return teach(train, test, model_opts, noise, cfg, rt, on_progress, resume, parents, val, val_opts, **sections)
    seed_everything(cfg.seed)
    model, spec, own = make_detector(model_opts, train.images, train.truth, train.classes)
    model = rt.prepare(model)
    input_meta = input_of_images(train.images)
    n_pseudo = len(train) - n_labeled
    # An epoch is one pass over the pseudo-labeled part; the labeled part recurs.
    mix = Mix.plan(n_labeled, n_pseudo, cfg.batch_size, 3.0 if opts.ratio is None else opts.ratio)
    feed = rt.place(train.images[:n_labeled], train.images[n_labeled:])       # views: the images once, in two parts
    history = fit(model, pseudo_objective(model, train.truth, n_labeled, input_meta, noise, opts, rt),
                  mix.batches(feed, cfg.seed, rt.device), mix.steps, cfg, rt, on_progress, resume,
                  batch_images=mix.rows, validation=validation_of(model, val, input_meta, rt, val_opts))
    return trained(model, spec, train, test, input_meta, [*own, *parents], cfg, mix.rows, noise, history, rt,
                   val=val, val_opts=val_opts, **sections)
