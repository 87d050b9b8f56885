"""FitNets stage 1 (Romero et al., ICLR 2015): the student up to its guided layer, followed by a regressor,
learns to predict the teacher's hint layer: loss 1/2 * mean (u_h(x) - r(v_g(x)))^2.

Layers are tapped with forward hooks on the named modules; the forward pass stops at the tapped layer,
so neither network runs past the layer this stage needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dpl.core import DplError, artifacts, augment, models
from dpl.core.data import Dataset
from dpl.core.teach import ModelOptions, NoiseOptions, Trained, check_input, make_model, train_record
from dpl.core.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch


class _Reached(Exception):
    pass


class LayerTap:
    """Runs a model up to the module at `path` and returns that module's output."""

    def __init__(self, model: nn.Module, path: str):
        self.model, self.path = model, path
        self.output = None
        self.handle = models.get_layer(model, path).register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        self.output = out
        raise _Reached

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.output = None
        try:
            self.model(x)
        except _Reached:
            pass
        out = self.output
        self.output = None
        if not isinstance(out, torch.Tensor):
            raise DplError(f"layer {self.path!r} does not output a tensor (it gives {type(out).__name__})")
        return out


BLOCK_TYPES = ("BasicBlock", "WideBlock", "Bottleneck", "InvertedResidual", "MBConv")


def middle_layer(model: nn.Module, input_shape) -> str:
    """The middle residual block (or, in a plain net, the middle ReLU) with a feature-map output."""
    rows = [r for r in models.list_layers(model, input_shape) if r["shape"] and len(r["shape"]) == 3]
    blocks = [r for r in rows if r["type"].endswith(BLOCK_TYPES)]
    candidates = blocks or [r for r in rows if r["type"] == "ReLU"] or rows
    return candidates[(len(candidates) - 1) // 2]["path"]


def make_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """Conv regressor whose kernel makes the spatial sizes match (as in the paper); linear for vectors."""
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        (cs, hs, ws), (ct, ht, wt) = student_shape, teacher_shape
        if hs >= ht and ws >= wt:
            return nn.Conv2d(cs, ct, kernel_size=(hs - ht + 1, ws - wt + 1))
        if hs <= ht and ws <= wt:
            return nn.ConvTranspose2d(cs, ct, kernel_size=(ht - hs + 1, wt - ws + 1))
        raise DplError(f"guided layer output {student_shape} and hint {teacher_shape} differ in aspect; "
                       "pick layers whose feature maps both shrink or both grow")
    if len(student_shape) == 1 and len(teacher_shape) == 1:
        return nn.Linear(student_shape[0], teacher_shape[0])
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(student_shape), math.prod(teacher_shape)),
                         nn.Unflatten(1, teacher_shape))


def output_shape(tap: LayerTap, input_shape) -> tuple[int, ...]:
    was_training = tap.model.training
    tap.model.eval()
    with torch.no_grad():
        shape = tuple(tap(torch.zeros(1, *input_shape, device=next(tap.model.parameters()).device)).shape[1:])
    tap.model.train(was_training)
    return shape


@dataclass(frozen=True)
class HintOptions:
    hint_layer: str | None = None      # teacher module path; None: the middle of the teacher
    guided_layer: str | None = None    # student module path; None: the middle of the student


def hint(train: Dataset, teacher_path: Path, model_opts: ModelOptions, noise_opts: NoiseOptions,
         opts: HintOptions, cfg: TrainConfig, rt: Runtime, on_progress: Progress | None = None, resume: ResumeSpec | None = None) -> Trained:
    if len(train) == 0:
        raise DplError(f"{train.spec}: no samples to train on")
    teacher_ckpt = artifacts.load_checkpoint(teacher_path)
    check_input(teacher_ckpt, train, teacher_path)
    seed_everything(cfg.seed)
    student, spec, parents = make_model(model_opts, train)
    teacher = teacher_ckpt.build_model().eval().requires_grad_(False)
    hint_layer = opts.hint_layer or middle_layer(teacher, train.shape)
    guided_layer = opts.guided_layer or middle_layer(student, train.shape)
    student, teacher = rt.prepare(student), rt.prepare(teacher)
    teacher_tap, student_tap = LayerTap(teacher, hint_layer), LayerTap(student, guided_layer)
    t_shape, s_shape = output_shape(teacher_tap, train.shape), output_shape(student_tap, train.shape)
    regressor = rt.prepare(make_regressor(s_shape, t_shape))
    trained = nn.ModuleDict({"student": student, "regressor": regressor})

    mean, std = train.normalization
    input_meta = artifacts.input_meta(train.shape[0], train.shape[1], mean, std)
    t_mean, t_std = teacher_ckpt.input["mean"], teacher_ckpt.input["std"]
    noise = noise_opts.for_data(train)

    def objective(batch):
        x = augment.apply(batch[1], noise)
        with torch.no_grad():
            target = teacher_tap(augment.to_input(x, t_mean, t_std, rt.cuda)).float()
        guess = regressor(student_tap(augment.to_input(x, mean, std, rt.cuda))).float()
        return 0.5 * (guess - target).pow(2).mean(), {}

    batch_size = min(cfg.batch_size, len(train))
    try:
        history = fit(trained, objective, rt.place(train.images).shuffled(batch_size, cfg.seed),
                      steps_per_epoch(len(train), batch_size), cfg, rt, on_progress, resume)
    finally:
        teacher_tap.handle.remove()
        student_tap.handle.remove()
    parents.append({"role": "teacher", "path": str(teacher_path), "sha256": teacher_ckpt.sha256()})
    meta = {
        "arch": spec, "num_classes": train.num_classes, "classes": train.classes, "input": input_meta,
        "data": train.describe(), "parents": parents, "seed": cfg.seed,
        "metrics": {"hint_loss_first_epoch": history[0]["loss"], "hint_loss": history[-1]["loss"]},
        "hint": {"hint_layer": hint_layer, "guided_layer": guided_layer, "hint_shape": list(t_shape),
                 "guided_shape": list(s_shape), "regressor": type(regressor).__name__},
        "train": train_record(cfg, batch_size, noise),
    }
    return Trained(student.cpu(), meta, history, extras={f"regressor.{k}": v for k, v in regressor.state_dict().items()})
