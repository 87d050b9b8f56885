"""FitNets stage 1 (Romero et al., ICLR 2015): the student up to its guided layer, followed by a regressor,
learns to predict the teacher's hint layer: loss 1/2 * mean (u_h(x) - r(v_g(x)))^2.

Both layers are reached by `models.Taps` that stop the forward pass there, so neither network runs past
the layer this stage needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import DplError, losses, models
from ..data import augment
from ..models import make_regressor, middle_layer
from ..data import Dataset
from .common import (
    ModelOptions, NoiseOptions, Trained, checkpoint_meta, input_of, load_teachers, make_model, parent, train_record
)
from ..engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch

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
