"""Training WSDDN: the noise that leaves image labels as they are, the objective (image-level BCE, OICR's
refinement, the spatial regulariser: `losses.detection`), and `train_wsddn`, whose checkpoint goes through
`common.checkpoint_meta`."""

from __future__ import annotations

from dataclasses import asdict

import torch

from ... import DplError, data
from ...data import augment
from ...data.scenes import BoxData
from ...losses.detection import image_bce, refinement_loss, spatial_regulariser
from ..common import (
    ModelOptions, NoiseOptions, Trained, ValOptions, checkpoint_meta, held_out, input_of_images, make_model,
    train_record,
)
from ...engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch
from .network import TASK, Wsddn, WsddnOptions, scores_of
from .readout import measure

VAL = ValOptions(metric="corloc")       # --keep best: the epoch of the best validation CorLoc
VAL_FIGURES = ("corloc", "map50", "map")


def as_dataset(box: BoxData) -> data.Dataset:
    """A classification-shaped view of data with boxes, for what builds a model for images (make_model,
    input_of): its images, no labels, its classes."""
    source, _, split = box.spec.rpartition(":")
    return data.Dataset(source, split, box.images, torch.full((len(box),), -1, dtype=torch.int64), box.classes)


def noise_of(noise_opts: NoiseOptions, box: BoxData) -> augment.Noise:
    """Random crop and flip, which leave image labels as they are (flip only where the classes survive it)."""
    made = box.record.get("scenes") or {}
    source = str(made.get("source", "coco"))
    hflip = source.partition(":")[0] in data.HFLIP_OK or box.spec.startswith("coco:")
    return augment.Noise(crop_pad=max(1, box.shape[1] // 8) if noise_opts.crop else 0,
                         hflip=noise_opts.flip and hflip, randaugment=noise_opts.randaugment)


def wsddn_objective(net: Wsddn, targets: torch.Tensor, noise: augment.Noise, input_meta: dict, opts: WsddnOptions,
                    rt: Runtime):
    """The image scores' multi-label BCE against the classes present, with OICR's refinement streams and the
    spatial regulariser where asked."""
    y = targets.to(rt.device)
    mean, std = input_meta["mean"], input_meta["std"]

    def objective(b):
        idx, x = b
        cls, det, refined, features = net(augment.to_input(augment.apply(x, noise), mean, std, rt.cuda), features=True)
        region, image, _ = scores_of(cls, det)
        target = y[idx]
        terms = {"bce": image_bce(image, target)}
        if opts.spatial:
            terms["spatial"] = opts.spatial * spatial_regulariser(features.float(), region, target, net.overlaps)
        previous = region
        for k, logits in enumerate(refined, 1):
            terms[f"refine{k}"] = refinement_loss(logits, previous, target, net.overlaps)
            previous = logits.float().softmax(2)[..., 1:]
        return terms, {"acc": ((image > 0.5).float() == target).float().mean()}
    return objective


def train_wsddn(train_data: BoxData, model_opts: ModelOptions, noise_opts: NoiseOptions, opts: WsddnOptions,
                cfg: TrainConfig, rt: Runtime, test: BoxData | None = None, on_progress: Progress | None = None,
                resume: ResumeSpec | None = None, val: BoxData | None = None, val_opts: ValOptions = VAL) -> Trained:
    """Train on the image-level labels of `train_data` (its boxes are never read); `val`'s CorLoc (and mAP, its
    boxes known) is measured during training (--keep best); once trained, CorLoc on the training images and mAP on
    `test` go into the checkpoint's metrics."""
    targets = train_data.image_labels()
    if len(train_data) < 2 or not bool((targets.sum(0) > 0).any()):
        raise DplError(f"{train_data.spec}: {len(train_data)} images: WSDDN needs at least 2 images with labels")
    batch = min(cfg.batch_size, len(train_data))
    seed_everything(cfg.seed)
    ds = as_dataset(train_data)
    backbone, spec, parents = make_model(model_opts, ds)
    c, size, _ = train_data.shape
    net = rt.prepare(Wsddn(backbone, len(train_data.classes), c, size, opts))
    input_meta = input_of_images(train_data.images)
    noise = noise_of(noise_opts, train_data)
    feed = rt.place(train_data.images)
    objective = wsddn_objective(net, targets, noise, input_meta, opts, rt)
    history = fit(net, objective, feed.shuffled(batch, cfg.seed), steps_per_epoch(len(train_data), batch), cfg, rt,
                  on_progress, resume, batch_images=batch,
                  validation=validation_of(net, val, input_meta, rt, val_opts))
    last = history[-1]
    metrics = {"train_loss": last["loss"], "train_acc": last["acc"]}
    found = measure(net, train_data, test, input_meta, rt)
    metrics.update({k: v for k, v in found.items() if isinstance(v, float)},
                   **({"test_spec": test.spec} if test is not None else {}))
    record = {**asdict(opts), "proposals": len(net.proposals), "feature_layer": net.layer, "spatial_scale": net.scale,
              "test": None if test is None else {"spec": test.spec, "n": len(test)}}
    meta = checkpoint_meta(spec, ds, parents, cfg, {**train_record(cfg, batch, noise), **held_out(val, val_opts)},
                           metrics, history, val_opts=val_opts, task=TASK, data=train_data.record,
                           input_meta=input_meta, wsddn=record)
    return Trained(net.cpu(), meta, history)


def validation_of(net: Wsddn, val: BoxData | None, input_meta: dict, rt: Runtime, val_opts: ValOptions):
    """CorLoc (and mAP@.5, mAP, the boxes being known) of held-out images, for --val and --keep best."""
    return val_opts.measured((lambda: measure(net, val, val, input_meta, rt)) if val is not None else None,
                             VAL_FIGURES)
