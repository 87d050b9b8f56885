"""Part experts' views of a figure (DOPE): square crops around a body keypoint, sized by the figure's torso, and the
keypoints mapped into and out of them.

A crop of side S canvas pixels centred at (cx, cy), resampled to P x P pixels: crop pixel coordinate u maps to the
canvas at cx + (u / P - 1/2) * S (pixel i covers [i, i + 1) in both), bilinear, zeros outside the canvas. Its side
is a fixed multiple (PART_CROPS) of the torso's length |neck - pelvis|, which no limb's pose shortens, so the part
fills about the same share of every crop whatever the figure's size:

    hands   centred on each wrist, side 1.2 torsos: the palm and fingertips reach about 0.4 of a torso from it;
            6 keypoints (HAND_NAMES: palm and 5 fingertips), the wrist's left or right dropped, so one expert
            serves both hands (a left hand mirrored is a right hand: no left/right pairs, flipping is harmless)
    face    centred on the head, side 0.7 torsos: eyes, nose and mouth lie within the head's radius (0.22 torsos)
    body    the whole image, the 15 body joints

Experts learn from crops around the true keypoints, their centre shifted by up to JITTER of the side and the side
scaled by up to 1 ± JITTER, so that they also read crops placed by a body expert's predictions.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ... import DplError
from ...data.poses import NAMES, PARTS, SIGMAS, SKELETON, PoseData, fingerprint

PART_CROPS = {"hands": ("wrist", 1.2), "face": ("head", 0.7)}     # centred on, side in torso lengths
POSE_PARTS = ("whole", "body", "hands", "face")
JITTER = 0.15
HAND_NAMES = [n.removeprefix("left_") for n in NAMES if n.startswith("left_") and NAMES.index(n) in PARTS["hands"]]
_I = {n: i for i, n in enumerate(NAMES)}


def crop(images: torch.Tensor, centres: torch.Tensor, sides: torch.Tensor, size: int) -> torch.Tensor:
    """Square crops (N, C, size, size) of images (N, C, H, W) (any dtype; uint8 stays uint8, rounded) of side
    `sides` (N,) canvas pixels centred at `centres` (N, 2), bilinear, zeros outside."""
    n, _, h, w = images.shape
    theta = torch.zeros(n, 2, 3, dtype=torch.float32, device=images.device)
    theta[:, 0, 0] = sides / w
    theta[:, 1, 1] = sides / h
    theta[:, 0, 2] = 2 * centres[:, 0] / w - 1
    theta[:, 1, 2] = 2 * centres[:, 1] / h - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else out


def to_crop(xy: torch.Tensor, centres: torch.Tensor, sides: torch.Tensor, size: int) -> torch.Tensor:
    """Canvas coordinates (N, K, 2) into the crops' pixels."""
    return ((xy - centres[:, None]) / sides[:, None, None] + 0.5) * size


def to_canvas(xy: torch.Tensor, centres: torch.Tensor, sides: torch.Tensor, size: int) -> torch.Tensor:
    """Crop pixel coordinates (N, K, 2) back onto the canvas (the inverse of `to_crop`)."""
    return centres[:, None] + (xy / size - 0.5) * sides[:, None, None]


def torso(keypoints: torch.Tensor, names: list[str]) -> torch.Tensor:
    """The torso's length |neck - pelvis| (N,) of keypoints (N, K, 2+) named `names`, at least 1 px."""
    if "neck" not in names or "pelvis" not in names:
        raise DplError("a part crop is sized by the torso: the keypoints need a neck and a pelvis")
    xy = keypoints[..., :2]
    return (xy[:, names.index("neck")] - xy[:, names.index("pelvis")]).norm(dim=-1).clamp_min(1.0)


def part_sets(part: str) -> dict:
    """The keypoint set of a part expert: names, skeleton, flip_pairs, parts, sigmas (PoseData's fields)."""
    if part == "hands":
        palm = HAND_NAMES.index("palm")
        return {"names": list(HAND_NAMES), "skeleton": [(palm, i) for i in range(len(HAND_NAMES)) if i != palm],
                "flip_pairs": [], "parts": {"hands": list(range(len(HAND_NAMES)))},
                "sigmas": [SIGMAS[_I[f"left_{n}"]] for n in HAND_NAMES]}
    idx = PARTS[part]
    new = {old: i for i, old in enumerate(idx)}
    names = [NAMES[i] for i in idx]
    flips = [(new[_I[n]], new[_I["right" + n[4:]]]) for n in names if n.startswith("left_")]
    return {"names": names, "skeleton": [(new[a], new[b]) for a, b in SKELETON if a in new and b in new],
            "flip_pairs": flips, "parts": {part: list(range(len(idx)))}, "sigmas": [SIGMAS[i] for i in idx]}


def part_data(data: PoseData, part: str, size: int = 32, jitter: bool = False, seed: int = 0) -> PoseData:
    """A part expert's data from whole figures (the module docstring): `body`, the images with their body joints;
    `hands` and `face`, crops of `size` px around the true keypoints (`jitter`: moved and scaled at random, seeded
    by `seed`), two hands per figure. The boxes stay the figures' own, mapped, so that PCK keeps its normaliser."""
    if part not in POSE_PARTS:
        raise DplError(f"--pose-part must be one of {', '.join(POSE_PARTS)}, got {part!r}")
    if part == "whole":
        return data
    sets = part_sets(part)
    kp = data.keypoints
    if part == "body":
        idx = PARTS["body"]
        return _part(data, data.images, kp[:, idx], data.boxes, sets, part, size, jitter)
    anchor, ratio = PART_CROPS[part]
    sides_one = torso(kp, data.names) * ratio
    if part == "hands":
        rows = [[_I[f"{s}_{n}"] for n in HAND_NAMES] for s in ("left", "right")]
        centres = torch.cat([kp[:, _I[f"{s}_{anchor}"], :2] for s in ("left", "right")])
        source, keypoints = torch.cat([torch.arange(len(data))] * 2), torch.cat([kp[:, r] for r in rows])
        sides = torch.cat([sides_one, sides_one])
    else:
        centres, source, keypoints, sides = kp[:, _I[anchor], :2], torch.arange(len(data)), kp[:, PARTS["face"]], sides_one
    if jitter:
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(len(sides), 3, generator=g) * 2 - 1
        centres = centres + u[:, :2] * JITTER * sides[:, None]
        sides = sides * (1 + JITTER * u[:, 2])
    images = crop(data.images[source], centres, sides, size)
    xy = to_crop(keypoints[..., :2], centres, sides, size)
    inside = ((xy >= 0) & (xy < size)).all(-1)
    keypoints = torch.cat([xy, torch.where(inside, keypoints[..., 2], 0.0)[..., None]], -1)
    box = data.boxes[source].view(-1, 2, 2)
    boxes = to_crop(box, centres, sides, size).view(-1, 4)
    return _part(data, images, keypoints, boxes, sets, part, size, jitter, source)


def _part(data: PoseData, images, keypoints, boxes, sets: dict, part: str, size: int, jitter: bool,
          source: torch.Tensor | None = None) -> PoseData:
    cropped = {"size": size, "jitter": jitter} if source is not None else {}
    record = {**data.record, "pose_part": {"part": part, **cropped}, "keypoints": len(sets["names"]),
              "n": len(images), "image_size": list(images.shape[-2:])}
    record["fingerprint"] = fingerprint(record, images, keypoints, boxes)
    whole = source is None          # the same images: their masks and crops still hold
    return replace(data, images=images, keypoints=keypoints, boxes=boxes, masks=data.masks if whole else None,
                   crops=data.crops if whole else None, record=record, **sets)
