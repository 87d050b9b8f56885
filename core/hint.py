"""FitNets stage 1 (Romero et al., ICLR 2015): the student up to its guided layer, followed by a regressor,
learns to predict the teacher's hint layer: loss 1/2 * mean (u_h(x) - r(v_g(x)))^2.

Both layers are reached by `models.Taps` that stop the forward pass there, so neither network runs past
the layer this stage needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import DplError, augment, losses, models
from .data import Dataset
from .runs import (ModelOptions, NoiseOptions, Trained, checkpoint_meta, input_of, load_teachers, make_model, parent,
                   train_record)
from .train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch

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


@dataclass(frozen=True, kw_only=True)
class HintOptions:
    hint_layer: str | None = None      # teacher module path; None: the middle of the teacher
    guided_layer: str | None = None    # student module path; None: the middle of the student


def hint_objective(student_tap: models.Taps, teacher_tap: models.Taps, regressor: nn.Module, layers: tuple[str, str],
                   input_meta: dict, teacher_input: dict, noise: augment.Noise, rt: Runtime):
    guided, hinted = layers

    def step(batch):
        x = augment.apply(batch[1], noise)
        with torch.no_grad():
            target = teacher_tap.tensor(augment.to_input(x, teacher_input["mean"], teacher_input["std"], rt.cuda), hinted)
        guess = regressor(student_tap.tensor(augment.to_input(x, input_meta["mean"], input_meta["std"], rt.cuda), guided))
        return {"hint": losses.hint_mse(guess, target)}, {}
    return step


def hint(train: Dataset, teacher_path: Path, model_opts: ModelOptions, noise_opts: NoiseOptions,
         opts: HintOptions, cfg: TrainConfig, rt: Runtime, on_progress: Progress | None = None,
         resume: ResumeSpec | None = None) -> Trained:
    if len(train) == 0:
        raise DplError(f"{train.spec}: no samples to train on")
    [teacher_ckpt] = load_teachers([teacher_path], train)
    seed_everything(cfg.seed)
    student, spec, parents = make_model(model_opts, train)
    teacher = teacher_ckpt.build_model().eval().requires_grad_(False)
    hint_layer = opts.hint_layer or middle_layer(teacher, train.shape)
    guided_layer = opts.guided_layer or middle_layer(student, train.shape)
    student, teacher = rt.prepare(student), rt.prepare(teacher)
    with models.Taps(teacher, [hint_layer], stop=True) as teacher_tap, \
            models.Taps(student, [guided_layer], stop=True) as student_tap:
        t_shape = models.output_shape(teacher_tap, hint_layer, train.shape)
        s_shape = models.output_shape(student_tap, guided_layer, train.shape)
        regressor = rt.prepare(make_regressor(s_shape, t_shape))
        noise = noise_opts.for_data(train)
        objective = hint_objective(student_tap, teacher_tap, regressor, (guided_layer, hint_layer), input_of(train),
                                   teacher_ckpt.input, noise, rt)
        batch_size = min(cfg.batch_size, len(train))
        history = fit(nn.ModuleDict({"student": student, "regressor": regressor}), objective,
                      rt.place(train.images).shuffled(batch_size, cfg.seed),
                      steps_per_epoch(len(train), batch_size), cfg, rt, on_progress, resume, batch_images=batch_size)
    parents.append(parent("teacher", teacher_path, teacher_ckpt.sha256()))
    meta = checkpoint_meta(
        spec, train, parents, cfg, train_record(cfg, batch_size, noise),
        {"hint_loss_first_epoch": history[0]["loss"], "hint_loss": history[-1]["loss"]}, history,
        hint={"hint_layer": hint_layer, "guided_layer": guided_layer, "hint_shape": list(t_shape),
              "guided_shape": list(s_shape), "regressor": type(regressor).__name__})
    return Trained(student.cpu(), meta, history,
                   objective={f"regressor.{k}": v for k, v in regressor.state_dict().items()})
