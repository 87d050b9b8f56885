"""Online distillation of a keypoint model from a live keypoint teacher, as DWPose's two stages (Yang et al., ICCV
2023 workshop, "Effective Whole-body Pose Estimation with Two-stages Distillation").

Stage one: the student learns the true keypoints where they are labeled (the heatmap MSE), the teacher's heatmaps
on every image (`heatmap_weight` x the mean squared difference over all cells and keypoints, the student's and the
teacher's heatmaps of the same noised image) and the teacher's feature map at its head's input (`feature_weight` x
the MSE after the student's map is projected to the teacher's channels by a 1x1 convolution, or by a FitNets
regressor where the sizes differ). With `decay`, both distillation weights fall linearly from 1 to 0 over training
(DWPose's weight decay: the student leans on the truth at the end). DWPose compares coordinate-classification
outputs (SimCC) by KL at a temperature; dpl's heatmap heads are regressed, so their outputs are compared by MSE, as
in Fast Pose Distillation (Zhang et al., CVPR 2019).

Stage two (head-aware self-distillation): the trained student is its own teacher (`--teacher` and `--init` the
same checkpoint) and only its head trains (`head_only`: the backbone frozen, batch-norm statistics included), a
short schedule of the same terms without the feature term.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ... import DplError, models
from ...data import augment
from ...data.poses import PoseData
from ...engine.train import Clock, Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch
from ..common import ModelOptions, Trained, ValOptions, input_of_images, parent
from .heatmaps import DEFAULT_SIGMA, gaussian_targets, heatmap_loss
from .model import KeypointNet
from .noise import PoseNoise
from .training import PCK_FIGURES, VAL, check_data, load_model, make_model, measure, trained


@dataclass(frozen=True, kw_only=True)
class PoseKD:
    heatmap_weight: float = 1.0      # --alpha: the teacher's heatmaps
    feature_weight: float = 0.0      # --feature-weight with --feature-loss hint: the teacher's feature map
    decay: bool = False              # --kd-decay: both weights fall linearly to 0 over training
    head_only: bool = False          # --head-only: the backbone frozen (stage two)

    def __post_init__(self):
        if self.heatmap_weight < 0 or self.feature_weight < 0:
            raise DplError("distillation weights cannot be negative")


def _feature_shape(model: KeypointNet, shape, rt: Runtime) -> tuple[int, ...]:
    was = model.training
    model.eval()
    with torch.no_grad():
        fmap, _ = model.features_and_heatmaps(torch.zeros(1, *shape, device=rt.device))
    model.train(was)
    return tuple(fmap.shape[1:])


def projection(s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> nn.Module:
    """The student's feature map to the teacher's: a 1x1 convolution where the sizes agree, else a regressor."""
    if s_shape[1:] == t_shape[1:]:
        return nn.Conv2d(s_shape[0], t_shape[0], 1)
    return models.make_regressor(s_shape, t_shape)


def kd_objective(student: KeypointNet, teacher: KeypointNet, adapter: nn.Module | None, keypoints: torch.Tensor,
                 input_meta: dict, t_input: dict, noise: PoseNoise, flip_pairs, sigma: float, opts: PoseKD,
                 clock: Clock, total_steps: int, rt: Runtime):
    def step(batch):
        idx, images = batch
        x, kp = noise.apply(images, keypoints[idx.to(keypoints.device)].to(images.device), flip_pairs)
        fmap, heat = student.features_and_heatmaps(augment.to_input(x, input_meta["mean"], input_meta["std"], rt.cuda))
        with torch.no_grad():
            t_fmap, t_heat = teacher.features_and_heatmaps(augment.to_input(x, t_input["mean"], t_input["std"],
                                                                             rt.cuda))
        if t_heat.shape[-2:] != heat.shape[-2:]:
            t_heat = F.interpolate(t_heat, size=heat.shape[-2:], mode="bilinear", align_corners=False)
        weight = max(0.0, 1 - clock.step / total_steps) if opts.decay else 1.0
        targets, weights = gaussian_targets(kp, student.heatmap_size, student.heatmap_stride, sigma)
        terms = {"heatmap": heatmap_loss(heat, targets, weights)}
        if opts.heatmap_weight:
            terms["kd"] = weight * opts.heatmap_weight * (heat.float() - t_heat.float()).pow(2).mean()
        if adapter is not None:
            terms["feature"] = weight * opts.feature_weight * F.mse_loss(adapter(fmap).float(), t_fmap.float())
        return terms, {"kd_weight": torch.tensor(weight)}
    return step


def distill_online(train: PoseData, test: PoseData | None, teacher_path: Path, model_opts: ModelOptions,
                   noise: PoseNoise, opts: PoseKD, cfg: TrainConfig, rt: Runtime,
                   on_progress: Progress | None = None, resume: ResumeSpec | None = None, val: PoseData | None = None,
                   val_opts: ValOptions = VAL, sigma: float = DEFAULT_SIGMA) -> Trained:
    """A keypoint student of a live keypoint teacher on `train` (true keypoints where labeled: visibility 0
    elsewhere), as the module docstring says."""
    if len(train) == 0:
        raise DplError("no images to train the keypoint model on")
    teacher, t_ckpt = load_model(teacher_path)
    check_data(t_ckpt.meta, train, teacher_path)
    seed_everything(cfg.seed)
    net, init_input, own = make_model(model_opts, train)
    if opts.head_only:
        if model_opts.init is None:
            raise DplError("--head-only trains the head of a trained keypoint model: give it with --init")
        net.freeze_backbone()
    student = rt.prepare(net)
    teacher = rt.prepare(teacher).eval().requires_grad_(False)
    input_meta = init_input or input_of_images(train.images)
    c, h, _ = train.shape
    s_shape, t_shape = _feature_shape(student, (c, h, h), rt), _feature_shape(teacher, (c, h, h), rt)
    adapter = rt.prepare(projection(s_shape, t_shape)) if opts.feature_weight and not opts.head_only else None
    module = nn.ModuleDict({"student": student, **({"adapter": adapter} if adapter is not None else {})})
    batch_size = min(cfg.batch_size, len(train))
    n_steps = steps_per_epoch(len(train), batch_size)
    clock = Clock(steps_per_epoch=n_steps)
    keypoints = train.keypoints.to(rt.device)
    objective = kd_objective(student, teacher, adapter, keypoints, input_meta, t_ckpt.input, noise,
                             train.flip_pairs, sigma, opts, clock, max(1, cfg.epochs * n_steps), rt)
    measured = (lambda: measure(student, val, input_meta, rt)) if val is not None and len(val) else None
    history = fit(module, objective, rt.place(train.images).shuffled(batch_size, cfg.seed), n_steps, cfg, rt,
                  on_progress, resume, batch_images=batch_size, validation=val_opts.measured(measured, PCK_FIGURES),
                  clock=clock)
    section = {"distill": "online", "teacher": str(teacher_path), **asdict(opts),
               "feature": adapter is not None, "student_features": list(s_shape), "teacher_features": list(t_shape),
               "labeled_keypoints": int((train.keypoints[..., 2] > 0).sum())}
    return trained(student, train, test, input_meta, [*own, parent("teacher", teacher_path, t_ckpt.sha256())], cfg,
                   batch_size, noise, sigma, history, rt, val, val_opts, section)
