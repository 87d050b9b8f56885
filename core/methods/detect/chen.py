"""Online distillation of a detector from a live teacher detector: Chen et al., NeurIPS 2017 (Faster R-CNN only).

All three terms are computed on the STUDENT's RoIs (`losses.detection` has their formulas):
    soft   class-weighted soft cross-entropy on the RoI classifier at temperature T (`weighted_soft_ce`), w_0 =
           `background_weight` (1.5 in the paper) for the background and 1 for the objects; the same on the RPN's
           objectness (two classes, `weighted_soft_bce`) where the two RPNs share anchors and feature-map size.
    bound  teacher-bounded regression (`bounded_regression`) on the positive RoIs, with the class-specific box
           regression of the true class.
    hint   1/2 mean squared error between the teacher's backbone features and the student's through an adaptation
           layer (`models.make_regressor`; `losses.hint_mse`).
The teacher's classification and regression are its own RoI heads (box_roi_pool, box_head, box_predictor) run on
its own feature map with the student's proposals, so both score the same regions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ... import DplError, losses, models
from ...data import augment
from ...data.boxes import Boxes
from ...data.scenes import BoxData
from ...losses.detection import bounded_regression, weighted_soft_bce, weighted_soft_ce
from ..common import HookedObjective, ModelOptions, Trained, ValOptions, input_of_images, parent
from ...engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch
from .model import (
    ANCHOR_KEYS, VAL, check_classes, check_images, load_detector, make_detector, targets_of, to_model, validation_of
)
from .noise import BoxNoise
from .training import trained

RPN_HEAD = "rpn.head"       # the student's RPN head, tapped for its objectness (it runs once, in the student's RPN)


@dataclass(frozen=True, kw_only=True)
class ChenOptions:
    """The three terms of Chen et al. and their knobs; a weight of 0 switches a term off."""

    soft_weight: float = 1.0            # weighted soft CE on the RoI classifier (mixed with the hard CE, kept at 1)
    rpn_weight: float = 1.0             # the same on the RPN objectness (when the RPNs share anchors)
    bound_weight: float = 0.5           # nu, the teacher-bounded regression term
    hint_weight: float = 0.0            # the hint through the adaptation layer (FitNets' form, 1/2 MSE)
    background_weight: float = 1.5      # w_0 of the soft CE
    tau: float = 1.0
    margin: float = 0.0                 # m of the bounded regression

    def __post_init__(self):
        for flag, v in (("--soft-weight", self.soft_weight), ("--rpn-weight", self.rpn_weight),
                        ("--bound-weight", self.bound_weight), ("--hint-weight", self.hint_weight),
                        ("--bound-margin", self.margin)):
            if not (v >= 0 and math.isfinite(v)):
                raise DplError(f"{flag} must be a finite number >= 0, got {v}")
        if not (self.background_weight > 0 and self.tau > 0):
            raise DplError("--background-weight and --tau must be > 0")


def class_regression(box_regression: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The (n, 4) regression of each row's own class out of (n, 4 * (C + 1))."""
    return box_regression.reshape(len(labels), -1, 4)[torch.arange(len(labels), device=labels.device), labels]


def roi_outputs(model: nn.Module, features: dict, proposals: list[torch.Tensor], sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """A detector's RoI classifier and regression on given proposals (its box_roi_pool, box_head, box_predictor)."""
    heads = model.roi_heads
    return heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals, sizes)))


def chen_objective(student: nn.Module, teacher: nn.Module, adapter: nn.Module | None, truth: Boxes,
                   input_meta: dict, teacher_input: dict, noise: BoxNoise, opts: ChenOptions, rt: Runtime,
                   rpn_soft: bool) -> HookedObjective:
    """The student's Faster R-CNN losses plus Chen et al.'s terms (see the module docstring); the student's RPN
    head is tapped until the objective's `with` ends."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    rpn_head = models.Taps(student, [RPN_HEAD])     # its last output is the student's objectness of this step

    def step(batch):
        idx, images = batch
        x, targets = noise.apply(images, targets_of(truth, idx, rt.device))
        targets = to_model(targets)
        xs = augment.to_input(x, input_meta["mean"], input_meta["std"], rt.cuda)
        sizes = [(x.shape[-2], x.shape[-1])] * len(x)
        s_feat = student.backbone(xs)
        proposals, rpn_losses = student.rpn(ImageList(xs, sizes), {"0": s_feat}, targets)
        proposals, _, labels, regression_targets = student.roi_heads.select_training_samples(proposals, targets)
        s_logits, s_reg = roi_outputs(student, {"0": s_feat}, proposals, sizes)
        cls, box = fastrcnn_loss(s_logits, s_reg, labels, regression_targets)
        terms = {"cls": cls, "box": box, "rpn_obj": rpn_losses["loss_objectness"],
                 "rpn_box": rpn_losses["loss_rpn_box_reg"]}
        with torch.no_grad():
            t_feat = teacher.backbone(augment.to_input(x, teacher_input["mean"], teacher_input["std"], rt.cuda))
            t_logits, t_reg = roi_outputs(teacher, {"0": t_feat}, proposals, sizes)
            t_objectness = teacher.rpn.head([t_feat])[0][0] if rpn_soft and opts.rpn_weight else None
        if opts.soft_weight:
            terms["soft"] = opts.soft_weight * weighted_soft_ce(s_logits, t_logits, opts.background_weight, opts.tau)
        if t_objectness is not None:
            terms["rpn_soft"] = opts.rpn_weight * weighted_soft_bce(rpn_head.captured[RPN_HEAD][0][0], t_objectness,
                                                                    opts.background_weight, opts.tau)
        if opts.bound_weight:
            labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
            pos = labels > 0
            terms["bound"] = opts.bound_weight * bounded_regression(
                class_regression(s_reg, labels)[pos], class_regression(t_reg, labels)[pos], regression_targets[pos],
                opts.margin)
        if opts.hint_weight:
            terms["hint"] = opts.hint_weight * losses.hint_mse(adapter(s_feat), t_feat)
        return terms, {}
    return HookedObjective(step, rpn_head)


def distill_online(train: BoxData, test: BoxData | None, teacher_path: Path, model_opts: ModelOptions, noise: BoxNoise,
                   opts: ChenOptions, cfg: TrainConfig, rt: Runtime, on_progress: Progress | None = None,
                   resume: ResumeSpec | None = None, val: BoxData | None = None,
                   val_opts: ValOptions = VAL) -> Trained:
    """Chen et al.'s distillation of a detector from a live teacher detector on `train`'s ground-truth boxes."""
    if len(train) == 0:
        raise DplError("no images to train the detector on")
    teacher, t_ckpt = load_detector(teacher_path)
    _check_teacher(model_opts, teacher_path, t_ckpt, train)
    seed_everything(cfg.seed)
    # The teacher's anchors, so that the two RPNs' objectness maps line up (the RPN term of the soft loss).
    student, spec, own = make_detector(model_opts, train.images, train.truth, train.classes,
                                       {k: t_ckpt.arch[k] for k in ANCHOR_KEYS[1:] if k in t_ckpt.arch})
    teacher = rt.prepare(teacher).eval().requires_grad_(False)
    student = rt.prepare(student)
    _, c, h, _ = train.images.shape
    s_shape = _feature_shape(student, (c, h, h), rt)
    t_shape = _feature_shape(teacher, (c, h, h), rt)
    adapter = rt.prepare(models.make_regressor(s_shape, t_shape)) if opts.hint_weight else None
    # The RPN objectness maps line up only with the same anchors on a feature map of the same size.
    rpn_soft = s_shape[1:] == t_shape[1:] and all(spec.get(k) == t_ckpt.arch.get(k) for k in ANCHOR_KEYS)
    input_meta = input_of_images(train.images)
    module = nn.ModuleDict({"student": student, **({"adapter": adapter} if adapter is not None else {})})
    batch_size = min(cfg.batch_size, len(train))
    with chen_objective(student, teacher, adapter, train.truth, input_meta, t_ckpt.input, noise, opts, rt,
                        rpn_soft) as objective:
        history = fit(module, objective, rt.place(train.images).shuffled(batch_size, cfg.seed),
                      steps_per_epoch(len(train), batch_size), cfg, rt, on_progress, resume, batch_images=batch_size,
                      validation=validation_of(student, val, input_meta, rt, val_opts))
    section = {"teacher": str(teacher_path), **asdict(opts), "rpn_soft": rpn_soft and opts.rpn_weight > 0,
               "student_features": list(s_shape), "teacher_features": list(t_shape)}
    objective_tensors = {f"adapter.{k}": v.cpu() for k, v in adapter.state_dict().items()} if adapter is not None else {}
    return trained(student, spec, train, test, input_meta, [*own, parent("teacher", teacher_path, t_ckpt.sha256())],
                   cfg, batch_size, noise, history, rt, objective_tensors, val, val_opts,
                   detect={"distill": "chen", **section})


def _check_teacher(model_opts: ModelOptions, teacher_path: Path, t_ckpt, train: BoxData) -> None:
    """Both detectors must have the RPN and RoI heads the terms read, and the teacher this data's classes and canvas."""
    for role, name in (("--arch", models.parse_arch(model_opts.arch)[0]), (str(teacher_path), t_ckpt.arch["name"])):
        family = models.detector_family(name)
        if family is not None and not family.two_stage:
            raise DplError(f"{role}: {name} is a {family.title}, without the RPN and RoI heads that Chen et al.'s "
                           "online terms read; distil it offline (dpl label, then --labels BOXES/) or use frcnn-BACKBONE")
    check_classes(t_ckpt.meta, train.classes, teacher_path)
    check_images(t_ckpt.meta, train.images, teacher_path)


def _feature_shape(model: nn.Module, shape: tuple[int, int, int], rt: Runtime) -> tuple[int, ...]:
    was = model.backbone.training
    model.backbone.eval()
    with torch.no_grad():
        out = model.backbone(torch.zeros(1, *shape, device=rt.device))
    model.backbone.train(was)
    return tuple(out.shape[1:])
