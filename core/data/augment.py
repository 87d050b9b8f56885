"""The noise: random crop, flip and RandAugment(N, M), batched on the device, on uint8 images.

Each sample of a batch draws its own ops, signs, crop offsets and flips; the work is done by a few
batched kernel calls per op, never by a Python loop over samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF

from .. import DplError

MAX_MAGNITUDE = 30  # RandAugment's M runs from 0 to 30, as in the paper and torchvision


@dataclass(frozen=True)
class Noise:
    crop_pad: int = 0                 # random crop after zero padding by this many pixels (0: off)
    hflip: bool = False
    randaugment: tuple[int, int] | None = None   # (N ops per image, magnitude M in 0..30)


def parse_randaugment(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        n, m = (int(v) for v in text.split(","))
    except ValueError:
        raise DplError(f"--randaugment takes N,M (e.g. 2,9), got {text!r}") from None
    if not (0 <= n <= 10 and 0 <= m <= MAX_MAGNITUDE):
        raise DplError(f"--randaugment N,M needs 0 <= N <= 10 and 0 <= M <= {MAX_MAGNITUDE}, got {text!r}")
    return (n, m) if n else None


def apply(x: torch.Tensor, noise: Noise) -> torch.Tensor:
    """uint8 (B, C, H, W) -> uint8 (B, C, H, W), noised."""
    if noise.randaugment:
        x = randaugment(x, *noise.randaugment)
    if noise.crop_pad:
        x = random_crop(x, noise.crop_pad)
    if noise.hflip:
        x = random_hflip(x)
    return x


def to_input(x: torch.Tensor, mean, std, channels_last: bool = False) -> torch.Tensor:
    """uint8 images -> normalized float model input."""
    mean = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    out = (x.float().div_(255) - mean).div_(std)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    b = x.shape[0]
    oy = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    return crop_at(x, pad, torch.cat([oy, ox], dim=1))


def crop_at(x: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Each image zero-padded by `pad` and cut back to its size at its own (row, column) offset, (B, 2) in
    0..2*pad: the random crop's geometry with the offsets given (stored views replay them)."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy, ox = offsets.long().to(x.device).split(1, dim=1)
    rows = (oy + torch.arange(h, device=x.device))[:, :, None]   # (B, H, 1)
    cols = (ox + torch.arange(w, device=x.device))[:, None, :]   # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()   # (B, H, W, C) -> (B, C, H, W)


def random_hflip(x: torch.Tensor) -> torch.Tensor:
    return flip_where(x, torch.rand(x.shape[0], device=x.device) < 0.5)


def flip_where(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    return torch.where(flips.bool().to(x.device)[:, None, None, None], x.flip(-1), x)


# ---- stored views: the crop and flip of each view drawn once, kept, and replayed -------------------------------

def sample_views(n: int, k: int, pad: int, hflip: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K views of each of n images: crop offsets (n, K, 2) int16 in 0..2*pad and flips (n, K) uint8, drawn
    from `seed` alone (sample i's views do not depend on which rank or shard labels it)."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 2 * pad + 1, (n, k, 2), generator=g, dtype=torch.int16)
    flips = torch.randint(0, 2, (n, k), generator=g, dtype=torch.uint8)
    return offsets, flips * hflip


def view_of(x: torch.Tensor, pad: int, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """The stored view of each image: crop at `offsets` (B, 2) after padding by `pad`, then flip where `flips`."""
    if pad:
        x = crop_at(x, pad, offsets)
    return flip_where(x, flips)


def replay(x: torch.Tensor, noise: Noise, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """A stored view of each image (what the teacher saw), then the student's RandAugment on top where asked."""
    x = view_of(x, noise.crop_pad, offsets, flips)
    return randaugment(x, *noise.randaugment) if noise.randaugment else x


# ---- RandAugment ----------------------------------------------------------------------------------
# Each op takes (uint8 batch, magnitude in [0, 1], sign +-1) and works on the whole sub-batch at once.

def _affine(x, **kw):
    base = dict(angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=[0.0, 0.0])
    return TF.affine(x, **{**base, **kw}, interpolation=TF.InterpolationMode.NEAREST, fill=0.0)


def _blend_factor(m, sign):
    return 1.0 + 0.9 * m * sign


OPS = {
    "identity": lambda x, m, s: x,
    "shear_x": lambda x, m, s: _affine(x, shear=[math.degrees(math.atan(0.3 * m)) * s, 0.0]),
    "shear_y": lambda x, m, s: _affine(x, shear=[0.0, math.degrees(math.atan(0.3 * m)) * s]),
    "translate_x": lambda x, m, s: _affine(x, translate=[s * m * 0.45 * x.shape[-1], 0.0]),
    "translate_y": lambda x, m, s: _affine(x, translate=[0.0, s * m * 0.45 * x.shape[-2]]),
    "rotate": lambda x, m, s: _affine(x, angle=s * 30.0 * m),
    "brightness": lambda x, m, s: TF.adjust_brightness(x, _blend_factor(m, s)),
    "color": lambda x, m, s: TF.adjust_saturation(x, _blend_factor(m, s)) if x.shape[1] == 3 else x,
    "contrast": lambda x, m, s: TF.adjust_contrast(x, _blend_factor(m, s)),
    "sharpness": lambda x, m, s: TF.adjust_sharpness(x, _blend_factor(m, s)),
    "posterize": lambda x, m, s: TF.posterize(x, int(8 - round(4 * m))),
    "solarize": lambda x, m, s: TF.solarize(x, 255.0 * (1.0 - m)),
    "autocontrast": lambda x, m, s: TF.autocontrast(x),
    "equalize": lambda x, m, s: TF.equalize(x),
}
SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast", "sharpness"}


def randaugment(x: torch.Tensor, n: int, magnitude: int) -> torch.Tensor:
    """RandAugment (Cubuk et al. 2020): each image gets `n` ops drawn uniformly, all at `magnitude`."""
    m = magnitude / MAX_MAGNITUDE
    names = list(OPS)
    out = x.clone()
    for _ in range(n):
        choice = torch.randint(0, len(names), (x.shape[0],), device=x.device)
        negative = torch.rand(x.shape[0], device=x.device) < 0.5
        for k, name in enumerate(names):
            if name == "identity":
                continue
            groups = [(choice == k) & negative, (choice == k) & ~negative] if name in SIGNED else [choice == k]
            for sign, mask in zip((-1.0, 1.0), groups):
                idx = mask.nonzero().squeeze(1)
                if idx.numel():
                    out[idx] = OPS[name](out[idx], m, sign if name in SIGNED else 1.0)
    return out
