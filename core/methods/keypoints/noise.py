"""Pose-aware noise: a random horizontal flip and a random affine map (rotation, scale, translation) of each image,
batched on the device (one grid_sample for the batch), its keypoints moved by the same matrix and, where flipped,
left and right swapped.

Each sample's map is a 3 x 3 matrix M on continuous pixel coordinates (pixel i covers [i, i + 1); heatmaps.py):
a keypoint p moves to M p and output pixel q shows input point M^-1 q. With c the image's centre (W / 2, H / 2),

    M = T(c + t) R(angle) S(scale) T(-c) F,    F: x -> W - x where the sample is flipped (identity elsewhere)

R(a) = [[cos a, -sin a], [sin a, cos a]] in (x right, y down) coordinates: a positive angle turns the image
clockwise as displayed. A mirrored pixel i lands on W - 1 - i exactly: flipping is `images.flip(-1)` (to float
rounding; exactly on uint8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ... import DplError
from .heatmaps import flip_pairs_permutation, inside


def pose_matrices(height: int, width: int, angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                  flipped: torch.Tensor) -> torch.Tensor:
    """The maps M (N, 3, 3), float64, of `angle` (N,) in degrees, `scale` (N,), `shift` (N, 2) = (tx, ty) in
    pixels and `flipped` (N,) bool, as the module docstring composes them."""
    n, dev = len(angle), angle.device
    a = angle.double() * math.pi / 180
    cos, sin = torch.cos(a) * scale.double(), torch.sin(a) * scale.double()
    c = torch.tensor([width / 2, height / 2], dtype=torch.float64, device=dev)
    m = torch.zeros(n, 3, 3, dtype=torch.float64, device=dev)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1], m[:, 2, 2] = cos, -sin, sin, cos, 1.0
    linear = m[:, :2, :2]
    m[:, :2, 2] = c + shift.double() - (linear @ c[:, None]).squeeze(-1)       # the centre stays, then shifts
    flip = torch.eye(3, dtype=torch.float64, device=dev).repeat(n, 1, 1)
    flip[flipped, 0, 0], flip[flipped, 0, 2] = -1.0, float(width)
    return m @ flip


def warp_poses(images: torch.Tensor, keypoints: torch.Tensor, matrices: torch.Tensor, flipped: torch.Tensor,
               flip_pairs, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) (float, or uint8: rounded back) warped by `matrices` (N, 3, 3) (`pose_matrices`) in one
    bilinear grid_sample, the area brought in from outside set to `fill` (0: the mean colour of normalised images,
    black for uint8); keypoints (N, K, 3) moved alike, each (left, right) pair of `flip_pairs` swapped where
    `flipped`, and visibility set to 0 where a keypoint leaves [0, W) x [0, H). Coordinates of keypoints of
    visibility 0 are moved too, and mean nothing."""
    n, _, h, w = images.shape
    dev = images.device
    m = matrices.to(dev, torch.float64)
    to_unit = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]], dtype=torch.float64, device=dev)
    theta = to_unit @ torch.linalg.inv(m) @ torch.linalg.inv(to_unit)          # output -> input, in [-1, 1] units
    grid = F.affine_grid(theta[:, :2].float(), [n, images.shape[1], h, w], align_corners=False)
    x = images.float() - fill
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    if images.dtype == torch.uint8:
        out = out.round().clamp(0, 255).to(torch.uint8)
    else:
        out = out.to(images.dtype)
    kp = keypoints.to(dev)
    xy = kp[..., :2].double()
    moved = (xy @ m[:, :2, :2].transpose(1, 2) + m[:, None, :2, 2]).to(kp.dtype)
    vis = torch.where(inside(moved, h, w), kp[..., 2], torch.zeros_like(kp[..., 2]))
    kp = torch.cat([moved, vis[..., None]], -1)
    perm = flip_pairs_permutation(kp.shape[1], flip_pairs, dev)
    kp = torch.where(flipped.to(dev)[:, None, None], kp[:, perm], kp)
    return out, kp


def pose_noise(images: torch.Tensor, keypoints: torch.Tensor, flip_pairs, flip: bool = True, rotation: float = 0.0,
               scale: tuple[float, float] = (1.0, 1.0), translate: float = 0.0,
               generator: torch.Generator | None = None, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pose noise, each sample its own draw: a flip with probability 1/2 (if `flip`), an angle uniform in
    [-rotation, rotation] degrees, a scale uniform in `scale` = (lo, hi) and a shift uniform in
    [-translate, translate] times the width (x) and height (y), applied by `warp_poses`. The draws come from
    `generator` (on its device; the default generator of the images' device without one)."""
    n, _, h, w = images.shape
    dev = generator.device if generator is not None else images.device
    u = torch.rand(n, 5, generator=generator, device=dev, dtype=torch.float64).to(images.device)
    flipped = (u[:, 0] < 0.5) & flip
    angle = (2 * u[:, 1] - 1) * rotation
    factor = scale[0] + (scale[1] - scale[0]) * u[:, 2]
    shift = (2 * u[:, 3:] - 1) * translate * torch.tensor([w, h], dtype=torch.float64, device=images.device)
    return warp_poses(images, keypoints, pose_matrices(h, w, angle, factor, shift, flipped), flipped, flip_pairs, fill)


@dataclass(frozen=True, kw_only=True)
class PoseNoise:
    """The student's noise on images with keypoints (`pose_noise`'s knobs, checked)."""

    flip: bool = True
    rotation: float = 30.0                        # degrees, either way
    scale: tuple[float, float] = (0.75, 1.25)
    translate: float = 0.0                        # fraction of the side, either way

    def __post_init__(self):
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        if not 0 <= self.rotation <= 180:
            raise DplError(f"--rotation is in degrees, 0..180, got {self.rotation}")
        if len(self.scale) != 2 or not 0.25 <= self.scale[0] <= self.scale[1] <= 4.0:
            raise DplError(f"--scale-jitter LO,HI needs 0.25 <= LO <= HI <= 4, got {self.scale}")
        if not 0 <= self.translate <= 0.5:
            raise DplError(f"--translate is a fraction of the image side in [0, 0.5], got {self.translate}")

    def record(self) -> dict:
        return {"hflip": self.flip, "rotation": self.rotation, "scale_jitter": list(self.scale),
                "translate": self.translate, "pose_aware": True}

    def apply(self, images: torch.Tensor, keypoints: torch.Tensor, flip_pairs,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return pose_noise(images, keypoints, flip_pairs, self.flip, self.rotation, self.scale, self.translate,
                          generator)
