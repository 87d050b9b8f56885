"""Video pose distillation (Hong et al., ICCV 2021), task `video-pose`: a per-frame pose teacher labels unlabeled
clips, and a student encoder learns the teacher's normalised pose and its motion; its features then serve
few-shot action recognition (core/reporting/video.py).

Labels: `label_clips` runs a keypoint checkpoint (core/methods/keypoints) on every frame of every clip; the label
folder is a keypoint label folder (kind `keypoints`) whose `index` is clip * T + t over the clips' rows, its data
record the clips' (with their frame count).

Student (`VideoPoseNet`): a registry backbone that sees the frame and its difference with the previous frame
(2C input channels: the frame in the clips' normalisation, the difference divided by the same std), its feature
vector (D) read through `models.Taps`, and two linear heads: the pose (2K) and the motion (2K). Targets: the
teacher's keypoints at t as a normalised pose (core/reporting/video.normalised_pose over the keypoints the
teacher is confident of, >= `min_confidence`), and the motion Δp = pose_t − pose_{t−1}, divided by its standard
deviation over the labels (recorded) so that both terms weigh alike; a keypoint counts where the teacher is
confident in both frames. Loss: smooth L1 of the pose plus `motion_weight` times smooth L1 of the motion (0: the
student without Δp). The frames of the labeled clips are decoded once into memory (their size is checked before).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import DplError, artifacts, models
from ..data import augment, memory
from ..data.clips import ClipSet
from ..engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch
from ..reporting.video import clip_frames, normalised_pose
from .common import Trained, checkpoint_meta, train_record

TASK = "video-pose"


@dataclass(frozen=True)
class VideoPoseOptions:
    motion_weight: float = 0.1      # the Δp term's weight (0: pose only)
    min_confidence: float = 0.3     # teacher keypoints below this are no target

    def __post_init__(self):
        if not self.motion_weight >= 0:
            raise DplError(f"--motion-weight must be >= 0, got {self.motion_weight}")
        if not 0 <= self.min_confidence < 1:
            raise DplError(f"--min-confidence must be in [0, 1), got {self.min_confidence}")


# ---- labels -------------------------------------------------------------------------------------------

def check_teacher(meta: dict, clips: ClipSet, path) -> None:
    """Refuse clips whose frames or figures a keypoint teacher cannot serve."""
    expected = (meta["input"]["channels"], meta["input"]["size"], meta["input"]["size"])
    if tuple(clips.shape) != expected:
        raise DplError(f"{path}: the teacher takes {'x'.join(map(str, expected))} images, and {clips.spec} has "
                       f"frames of {'x'.join(map(str, clips.shape))}")
    names = meta["keypoints"]["names"]
    if clips.has_keypoints and list(clips.keypoint_set["names"]) != list(names):
        raise DplError(f"{path}: a teacher of {len(names)} keypoints ({', '.join(names[:3])}, ...), and the figures "
                       f"of {clips.spec} have {len(clips.keypoint_set['names'])} other ones: their keypoint sets "
                       f"differ")


@torch.inference_mode()
def label_clips(run, clips: ClipSet, frames: int, batch_clips: int = 16, on_progress: Progress | None = None
                ) -> dict[str, torch.Tensor]:
    """{index (N T,), coords (N T, K, 2), confidence (N T, K)} of every frame of every clip, and where the clips
    have them the true keypoints (N T, K, 3) and boxes (N T, 4) of the same frames (rendered once for both);
    `run(uint8 frames)` gives a teacher's (coords, confidence)."""
    found = {"index": [], "coords": [], "confidence": [], "keypoints": [], "boxes": []}
    if on_progress:
        on_progress({"event": "total", "total": len(clips)})
    for start in range(0, len(clips), batch_clips):
        rows = np.arange(start, min(start + batch_clips, len(clips)))
        times = np.tile(np.arange(frames), (len(rows), 1))
        if clips.has_keypoints:
            made = clips.poses(rows, times)
            found["keypoints"].append(made["keypoints"].flatten(0, 1))
            found["boxes"].append(made["boxes"].flatten(0, 1))
            x = made["frames"].flatten(0, 1)
        else:
            x = clips.frames(rows, times).flatten(0, 1)
        c, conf = run(x)
        found["index"].append(torch.from_numpy((rows[:, None] * frames + np.arange(frames)).reshape(-1)))
        found["coords"].append(c)
        found["confidence"].append(conf)
        if on_progress:
            on_progress({"event": "advance", "n": len(rows)})
    return {k: torch.cat(v) for k, v in found.items() if v}


# ---- the student ---------------------------------------------------------------------------------------

class VideoPoseNet(nn.Module):
    """A registry backbone on (frame, frame − previous) and the pose and motion heads on its feature vector."""

    def __init__(self, arch: dict, num_keypoints: int):
        super().__init__()
        self.arch, self.num_keypoints = dict(arch), num_keypoints
        self.backbone = models.build(self.arch)
        self.width = self.backbone.get_submodule(models.feature_layer(self.backbone)).in_features
        self.pose = nn.Linear(self.width, 2 * num_keypoints)
        self.motion = nn.Linear(self.width, 2 * num_keypoints)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with models.Taps(self.backbone, [models.FEATURES], stop=True) as taps:
            return taps.tensor(x, models.FEATURES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        k = self.num_keypoints
        return self.pose(f).view(-1, k, 2), self.motion(f).view(-1, k, 2)


def student_input(frames: torch.Tensor, previous: torch.Tensor, input_meta: dict) -> torch.Tensor:
    """(n, 2C, S, S): the frame normalised, and its difference with the previous frame divided by the std
    (`input_meta`: the student's, of 2C channels)."""
    c = frames.shape[1]
    mean, std = input_meta["mean"][:c], input_meta["std"][:c]
    diff = (frames.float() - previous.float()) / 255 / torch.tensor(std, device=frames.device).view(1, -1, 1, 1)
    return torch.cat([augment.to_input(frames, mean, std), diff], 1)


def targets(coords: torch.Tensor, confidence: torch.Tensor, frames: int, min_confidence: float
            ) -> dict[str, torch.Tensor]:
    """Per (clip, t ≥ 1): pose (N, T-1, K, 2), motion (N, T-1, K, 2) and the weights (N, T-1, K) of the targets,
    from a teacher's (N T, K, 2) coords and (N T, K) confidences; the motion's scale (its std over weighted
    entries)."""
    k = coords.shape[-2]
    coords, confident = coords.view(-1, frames, k, 2), confidence.view(-1, frames, k) >= min_confidence
    pose = normalised_pose(coords, confident)
    weight = (confident[:, 1:] & confident[:, :-1]).float()
    motion = pose[:, 1:] - pose[:, :-1]
    scale = float(motion[weight.bool()].std()) if weight.sum() > 1 else 1.0
    return {"pose": pose[:, 1:], "motion": motion / max(scale, 1e-6), "weight": weight, "pose_weight":
            confident[:, 1:].float(), "motion_scale": torch.tensor(max(scale, 1e-6))}


def _masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    loss = F.smooth_l1_loss(pred.float(), target, reduction="none", beta=.05).sum(-1)
    return (loss * weight).sum() / weight.sum().clamp_min(1)


def distill(clips: ClipSet, frames: int, coords: torch.Tensor, confidence: torch.Tensor, arch: str,
            opts: VideoPoseOptions, cfg: TrainConfig, rt: Runtime, parents: list[dict], teachers: list,
            on_progress: Progress | None = None, resume: ResumeSpec | None = None) -> Trained:
    """Train the student on the teacher's per-frame keypoints of `clips` (coords (N T, K, 2), confidence
    (N T, K) in label-folder order)."""
    n, c, side = len(clips), clips.channels, clips.size
    if frames < 2:
        raise DplError(f"{clips.spec}: clips of {frames} frames have no motion; video pose distillation needs 2")
    memory.check_fits(n * frames * c * side * side * 2, f"{n:,} clips of {frames} frames of {c}x{side}x{side}")
    seed_everything(cfg.seed)
    video = clip_frames(clips, frames)
    mean = video[:, :, :].float().mean(dim=(0, 1, 3, 4)) / 255
    std = (video.float() / 255).std(dim=(0, 1, 3, 4)).clamp_min(1e-3)
    # the input is 2C channels: the frame's in the clips' normalisation, then the difference's (mean 0, same std)
    input_meta = artifacts.input_meta(2 * c, side, mean.tolist() + [0.0] * c, std.tolist() * 2)
    k = coords.shape[-2]
    spec = models.arch_spec(arch, num_classes=2 * k, in_channels=2 * c, image_size=side)
    net = rt.prepare(VideoPoseNet(spec, k))
    t = {key: v.to(rt.device) for key, v in targets(coords, confidence, frames, opts.min_confidence).items()}
    video = video.to(rt.device)
    samples = n * (frames - 1)
    batch_size = min(cfg.batch_size, samples)

    def step(batch):
        idx = batch[0]
        clip, at = idx // (frames - 1), idx % (frames - 1)
        x = student_input(video[clip, at + 1], video[clip, at], input_meta)
        pose, motion = net(x)
        terms = {"pose": _masked_smooth_l1(pose, t["pose"][clip, at], t["pose_weight"][clip, at])}
        if opts.motion_weight:
            terms["motion"] = opts.motion_weight * _masked_smooth_l1(motion, t["motion"][clip, at],
                                                                     t["weight"][clip, at])
        return terms, {}

    history = fit(net, step, rt.place(torch.arange(samples)).shuffled(batch_size, cfg.seed),
                  steps_per_epoch(samples, batch_size), cfg, rt, on_progress, resume, batch_images=batch_size)
    metrics = {"train_loss": history[-1]["loss"]} if history else {}
    section = {**asdict(opts), "num_keypoints": k, "frames": frames, "motion_scale": float(t["motion_scale"]),
               "teachers": teachers}
    meta = checkpoint_meta(spec, None, parents, cfg, train_record(cfg, batch_size, None), metrics, history,
                           task=TASK, data={**clips.record, "frames": frames}, classes=list(clips.classes),
                           input_meta=input_meta, video_pose=section)
    return Trained(net.cpu(), meta, history, {})


def load_student(path) -> tuple[VideoPoseNet, artifacts.Checkpoint]:
    """A video-pose checkpoint's student, its tensors checked against the net its metadata describes."""
    ckpt = artifacts.load_checkpoint(path, task=TASK)
    section = ckpt.meta.get("video_pose")
    if not isinstance(section, dict) or not isinstance(section.get("num_keypoints"), int):
        raise DplError(f"{path}: corrupt or missing metadata value for 'video_pose'")
    try:
        net = VideoPoseNet(ckpt.arch, section["num_keypoints"])
    except (DplError, TypeError, KeyError, ValueError) as e:
        raise DplError(f"{path}: {e}") from None
    artifacts.load_state(net, ckpt.tensors, path)
    return net, ckpt


def student_embed(net: VideoPoseNet, input_meta: dict, rt: Runtime):
    """`embed(frames, previous)` of core/reporting/video.frame_features: the student's feature vectors."""
    net = net.to(rt.device).eval()

    def embed(x: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        return net.features(student_input(x.to(rt.device), previous.to(rt.device), input_meta))
    return embed


__all__ = ["TASK", "VideoPoseOptions", "VideoPoseNet", "check_teacher", "label_clips", "distill", "load_student",
           "student_embed", "student_input", "targets"]
