"""Box-aware noise: the student's noise on images with boxes, each transform moving the boxes with the pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ... import DplError
from ...data import augment

PHOTOMETRIC = ("brightness", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")


@dataclass(frozen=True, kw_only=True)
class BoxNoise:
    """The student's noise on images with boxes: photometric RandAugment ops (N ops at magnitude M), then a zoom about
    the centre by a factor drawn in `scale` (pixels outside the canvas are lost, the border is black) and a
    horizontal flip, each with its boxes transformed. A box left with less than half its area inside the canvas is
    dropped."""

    flip: bool = True
    scale: tuple[float, float] | None = None
    photometric: tuple[int, int] | None = None

    def __post_init__(self):
        if self.scale is not None and not 0.25 <= self.scale[0] <= self.scale[1] <= 4.0:
            raise DplError(f"--scale-jitter LO,HI needs 0.25 <= LO <= HI <= 4, got {self.scale}")

    def record(self) -> dict:
        return {"hflip": self.flip, "scale_jitter": list(self.scale) if self.scale else None,
                "randaugment": list(self.photometric) if self.photometric else None, "box_aware": True}

    def apply(self, x: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, list[dict]]:
        """uint8 (B, C, H, W) images and their targets ({"boxes", "labels"}) -> both noised alike."""
        if self.photometric:
            x = photometric(x, *self.photometric)
        if self.scale is not None and self.scale != (1.0, 1.0):
            lo, hi = self.scale
            factors = lo + (hi - lo) * torch.rand(len(x), device=x.device)
            x, targets = zoom(x, targets, factors)
        if self.flip:
            x, targets = hflip(x, targets, torch.rand(len(x), device=x.device) < 0.5)
        return x, targets


def photometric(x: torch.Tensor, n: int, magnitude: int) -> torch.Tensor:
    """RandAugment restricted to the ops that move no pixel (the boxes stay valid): `n` per image."""
    m = magnitude / augment.MAX_MAGNITUDE
    out = x.clone()
    for _ in range(n):
        choice = torch.randint(0, len(PHOTOMETRIC), (len(x),), device=x.device)
        sign = torch.where(torch.rand(len(x), device=x.device) < 0.5, -1.0, 1.0)
        for k, name in enumerate(PHOTOMETRIC):
            for s in (-1.0, 1.0):
                idx = ((choice == k) & (sign == s)).nonzero().squeeze(1)
                if idx.numel():
                    out[idx] = augment.OPS[name](out[idx], m, s)
    return out


def hflip(x: torch.Tensor, targets: list[dict], flip: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    """Mirror the images where `flip` (B,) is set, and their boxes: x1' = W - x2, x2' = W - x1."""
    w = x.shape[-1]
    out = []
    for t, f in zip(targets, flip.tolist()):
        b = t["boxes"]
        out.append({**t, "boxes": torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1) if f else b})
    return torch.where(flip[:, None, None, None], x.flip(-1), x), out


def zoom(x: torch.Tensor, targets: list[dict], factors: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    """Scale each image about its centre by factors[i] (bilinear; the canvas keeps its size), and its boxes:
    p' = (p - c) * s + c, clipped to the canvas; a box keeping less than half its area is dropped."""
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / factors
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.round().clamp(0, 255).to(torch.uint8)
    centre = torch.tensor([w / 2, h / 2, w / 2, h / 2], device=x.device)
    limit = torch.tensor([w, h, w, h], dtype=torch.float32, device=x.device)
    moved = []
    for t, s in zip(targets, factors.tolist()):
        full = (t["boxes"] - centre) * s + centre
        kept = torch.minimum(full.clamp(min=0), limit)
        area = lambda q: (q[:, 2] - q[:, 0]).clamp(min=0) * (q[:, 3] - q[:, 1]).clamp(min=0)   # noqa: E731
        keep = (area(kept) >= 0.5 * area(full)) & (kept[:, 2] - kept[:, 0] >= 1) & (kept[:, 3] - kept[:, 1] >= 1)
        moved.append({**{k: v[keep] for k, v in t.items()}, "boxes": kept[keep]})
    return out, moved

