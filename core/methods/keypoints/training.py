"""Training and measuring a keypoint model (task `keypoints`): `teach` on true keypoints (heatmap MSE through
`train.fit`, noise that moves keypoints with the image), `measure` (PCK per part, COCO keypoint AP by OKS,
images/s), the checkpoint (`trained`: the backbone's spec as `arch`, the head and the keypoint set as the
`keypoints` section) and `load_model`."""

from __future__ import annotations

import time

import torch

from ... import DplError, artifacts, models
from ...data import augment
from ...data.poses import PoseData
from ...engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch
from ..common import (
    ModelOptions, Trained, ValOptions, checkpoint_meta, held_out, input_of_images, parent, train_record,
)
from .heatmaps import DEFAULT_SIGMA, gaussian_targets, heatmap_loss
from .measure import oks_ap, pck
from .model import TASK, KeypointNet, build_keypoint_model, keypoint_model_from_spec, predict
from .noise import PoseNoise

VAL = ValOptions(metric="pck")
PCK_FIGURES = ("pck", "pck05", "ap")          # what --val logs each epoch (val_pck: PCK@0.1 over all keypoints)
SET_KEYS = ("names", "skeleton", "flip_pairs", "parts", "sigmas")   # the keypoint set a checkpoint carries


def keypoint_objective(model: KeypointNet, keypoints: torch.Tensor, input_meta: dict, noise: PoseNoise,
                       flip_pairs, sigma: float, rt: Runtime):
    """The heatmap MSE (`heatmaps.heatmap_loss`) of noised images against Gaussians at their moved keypoints."""
    def step(batch):
        idx, images = batch
        x, kp = noise.apply(images, keypoints[idx.to(keypoints.device)].to(images.device), flip_pairs)
        heat = model(augment.to_input(x, input_meta["mean"], input_meta["std"], rt.cuda))
        targets, weights = gaussian_targets(kp, model.heatmap_size, model.heatmap_stride, sigma)
        return {"heatmap": heatmap_loss(heat, targets, weights)}, {}
    return step


def make_model(model_opts: ModelOptions, train: PoseData) -> tuple[KeypointNet, dict | None, list[dict]]:
    """The keypoint net to train on `train`: fresh on --arch; or from --init, either a keypoint checkpoint of the
    same keypoint set (the whole net: a student trained on, as DWPose's second stage) or a classifier's or a
    pretrained backbone's checkpoint (dpl pretrain: its backbone, the head fresh). Returns the net, the input
    normalisation it was trained with (None: fresh, the data's) and its parents."""
    if model_opts.pretrained:
        raise DplError("--pretrained does not apply to a keypoint model: give --init with a dpl pretrain checkpoint")
    c, h, _ = train.shape
    k = len(train.names)
    path = model_opts.init
    if path is None:
        return build_keypoint_model(model_opts.arch, k, c, h, stochastic_depth=model_opts.stochastic_depth), None, []
    if artifacts.read_header(path, kind="checkpoint").meta.get("task") == TASK:
        net, ckpt = load_model(path)
        check_data(ckpt.meta, train, path)
    else:
        ckpt = artifacts.load_checkpoint(path)          # a classifier's or a pretrained backbone's
        if ckpt.heads:
            raise DplError(f"{path}: a student with {len(ckpt.heads)} heads; --init takes one backbone")
        expected = (ckpt.input["channels"], ckpt.input["size"], ckpt.input["size"])
        if tuple(train.shape) != expected:
            raise DplError(f"{path}: a backbone of {'x'.join(map(str, expected))} images, and {train.spec} has "
                           f"{'x'.join(map(str, train.shape))}")
        net = KeypointNet({**ckpt.arch, "num_classes": k}, k)
        fresh = net.backbone.state_dict()
        fc = models.feature_layer(net.backbone) + "."
        state = {n: v for n, v in ckpt.model_state().items() if not n.startswith(fc)}
        artifacts.load_state(net.backbone, {**state, **{n: v for n, v in fresh.items() if n.startswith(fc)}}, path)
    return net, ckpt.input, [parent("init", path, ckpt.sha256())]


def teach(train: PoseData, test: PoseData | None, model_opts: ModelOptions, noise: PoseNoise, cfg: TrainConfig,
          rt: Runtime, on_progress: Progress | None = None, resume: ResumeSpec | None = None,
          val: PoseData | None = None, val_opts: ValOptions = VAL, sigma: float = DEFAULT_SIGMA,
          parents: list[dict] | None = None, section: dict | None = None) -> Trained:
    """Train a keypoint model on `train`'s keypoints (true ones, or pseudo-keypoints where the teacher was
    confident: visibility 0 elsewhere, which no target teaches); `val` is measured during training (PCK, --keep
    best), `test` once trained, for the checkpoint's metrics. `parents` and `section` (the checkpoint's
    `distill` record) say where pseudo-keypoints came from."""
    if len(train) == 0:
        raise DplError("no images to train the keypoint model on")
    seed_everything(cfg.seed)
    net, init_input, own = make_model(model_opts, train)
    model = rt.prepare(net)
    input_meta = init_input or input_of_images(train.images)
    batch_size = min(cfg.batch_size, len(train))
    keypoints = train.keypoints.to(rt.device)
    measured = (lambda: measure(model, val, input_meta, rt)) if val is not None and len(val) else None
    history = fit(model, keypoint_objective(model, keypoints, input_meta, noise, train.flip_pairs, sigma, rt),
                  rt.place(train.images).shuffled(batch_size, cfg.seed), steps_per_epoch(len(train), batch_size),
                  cfg, rt, on_progress, resume, batch_images=batch_size,
                  validation=val_opts.measured(measured, PCK_FIGURES))
    return trained(model, train, test, input_meta, [*own, *(parents or [])], cfg, batch_size, noise, sigma,
                   history, rt, val, val_opts, section)


def trained(model: KeypointNet, train: PoseData, test: PoseData | None, input_meta: dict, parents: list[dict],
            cfg: TrainConfig, batch_size: int, noise: PoseNoise, sigma: float, history: list[dict], rt: Runtime,
            val: PoseData | None, val_opts: ValOptions, section: dict | None = None) -> Trained:
    """The checkpoint of a trained keypoint model: its test figures, the backbone's spec as `arch`, the head and
    the keypoint set as `keypoints`, and (distilled) the `distill` section."""
    metrics = {"train_loss": history[-1]["loss"]} if history else {}
    if test is not None:
        m = measure(model, test, input_meta, rt)
        metrics.update({f"test_{k}": v for k, v in m.items() if k != "images_per_s"}, test_spec=test.spec)
    record = {**train_record(cfg, batch_size, None, **noise.record(), heatmap_sigma=sigma), **held_out(val, val_opts)}
    if getattr(model, "frozen_backbone", False):
        record["head_only"] = True
    keypoint_set = {k: getattr(train, k) for k in SET_KEYS}
    meta = checkpoint_meta(model.spec["arch"], None, parents, cfg, record, metrics, history, val_opts=val_opts,
                           task=TASK, data=train.record, classes=list(train.names), input_meta=input_meta,
                           keypoints={**model.spec["keypoints"], **keypoint_set},
                           **({"distill": section} if section else {}))
    return Trained(model.cpu(), meta, history, {})


def measure(model: KeypointNet, data: PoseData, input_meta: dict, rt: Runtime, batch_size: int = 256,
            flip_test: bool = False) -> dict:
    """PCK@0.1 (`pck`) and @0.05 (`pck05`) over all keypoints and per part (`pck_body`, `pck05_body`, ...), COCO
    keypoint AP by OKS (`ap`, `ap50`, `ap75`; the data's sigmas) and images/s of the read-out (`flip_test`: with
    the mirrored image's heatmaps averaged in)."""
    x = augment.to_input(data.images.to(rt.device), input_meta["mean"], input_meta["std"])
    start = time.perf_counter()
    coords, confidence = predict(model, x, batch_size, flip_pairs=data.flip_pairs if flip_test else None)
    seconds = time.perf_counter() - start
    found = pck(coords, data.keypoints, data.boxes, data.parts)
    figures = {"pck": found["all"][0.1], "pck05": found["all"][0.05]}
    for part in data.parts:
        figures.update({f"pck_{part}": found[part][0.1], f"pck05_{part}": found[part][0.05]})
    figures.update(oks_ap(coords, confidence, data.keypoints, data.boxes, data.sigmas))
    return {**figures, "images_per_s": len(data) / max(seconds, 1e-9)}


def load_model(path) -> tuple[KeypointNet, artifacts.Checkpoint]:
    """A keypoint checkpoint's network, its tensors checked against the network its metadata describes."""
    ckpt = artifacts.load_checkpoint(path, task=TASK)
    section = ckpt.meta.get("keypoints")
    if not isinstance(section, dict) or not all(k in section for k in SET_KEYS):
        raise DplError(f"{path}: corrupt or missing metadata value for 'keypoints'")
    head = {k: v for k, v in section.items() if k not in SET_KEYS}
    try:
        net = keypoint_model_from_spec({"arch": ckpt.arch, "keypoints": head})
    except (DplError, TypeError) as e:
        raise DplError(f"{path}: {e}") from None
    artifacts.load_state(net, ckpt.tensors, path)
    return net, ckpt


def check_data(meta: dict, data: PoseData, path) -> None:
    """Refuse data whose keypoint set or image shape is not the checkpoint's."""
    names = meta["keypoints"]["names"]
    if list(data.names) != list(names):
        raise DplError(f"{path}: a model of {len(names)} keypoints, and {data.spec} has {len(data.names)} other ones")
    expected = (meta["input"]["channels"], meta["input"]["size"], meta["input"]["size"])
    if tuple(data.shape) != expected:
        raise DplError(f"{path}: the model takes {'x'.join(map(str, expected))} images, {data.spec} has "
                       f"{'x'.join(map(str, data.shape))}")
