"""Poses, `poses[:SOURCE][:SPLIT]`: a deterministic synthetic source of articulated 2-D figures with keypoints, one
figure per image (no pose data set can be had here, so this generator is the data of the keypoint task).

The keypoint set (NAMES: 15 body joints, per hand a palm centre and 5 fingertips, eyes, nose tip and mouth
corners; SKELETON, FLIP_PAIRS, PARTS, SIGMAS) and how figures are posed and drawn are core/data/pose_figures.py's.

Coordinates are canvas pixels, (x, y) float: pixel i covers [i, i + 1) and has its centre at i + 0.5, so a
horizontal flip maps x to W - x (flip_keypoints). Visibility follows COCO: 0 for a keypoint outside the canvas
(it keeps its true coordinates), 1 where it lies inside a capsule of a group painted after every group whose
parts end at it (so a part never hides its own joints: the hips are not hidden by the trunk, a wrist not by its
palm) or where a distractor in front covers its pixel with alpha of at least 1/2, else 2. Boxes are the tight
extent of the pixels the figure covers by at least a fifth (`masks`, the figure's own coverage, 0-255), so they
lie within the canvas. Train figures (`count`) and test figures (`test_count`) come from their own random stream
of (seed, source, split) and texture from the source's split of the same name: the same spec gives the same data.

"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .. import DplError, data
from . import images as image_files
from . import memory, pose_figures
from .partition import held_out_images
from .pose_figures import (  # noqa: F401  (the keypoint set, read from here)
    BODY_NAMES, FACE_NAMES, FLIP_PAIRS, HAND_NAMES, K, MIN_GAP, NAMES, PARTS, SIGMAS, SKELETON,
)

POSES = "poses"
CHUNK_PIXELS = 128 * 64 * 64     # canvas pixels rendered at once (128 figures at 64 px)


@dataclass(frozen=True, kw_only=True)
class PoseSpec:
    """How figures are made (core/data/pose_figures.py says how)."""

    source: str | None = None               # a classification source texturing figures and clutter; None: procedural
    canvas: int = 64                        # square canvas side, pixels
    count: int = 1000                       # train figures
    test_count: int = 300                   # test figures
    scale: tuple[float, float] = (.5, .95)  # standing height as a fraction of the canvas, drawn in this range
    rotation: float = 30.                   # largest whole-figure rotation, degrees
    clutter: int = 3                        # most distractors per image
    truncation: float = .1                  # probability that a figure is cut by a canvas edge
    seed: int = 0

    def __post_init__(self):
        for name, flag in (("canvas", "--canvas"), ("count", "--poses"), ("test_count", "--test-poses"),
                           ("clutter", "--clutter"), ("seed", "--pose-seed")):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise DplError(f"{flag} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if len(self.scale) != 2:
            raise DplError(f"--pose-scale must be a range LO,HI, got {self.scale!r}")
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        for name in ("rotation", "truncation"):
            object.__setattr__(self, name, float(getattr(self, name)))
        lo, hi = self.scale
        if self.source is not None:
            _check_source(self.source)
        if not 1 <= self.canvas <= image_files.MAX_SIZE:
            raise DplError(f"--canvas must be between 1 and {image_files.MAX_SIZE}, got {self.canvas}")
        for flag, n in (("--poses", self.count), ("--test-poses", self.test_count)):
            if n < 1:
                raise DplError(f"{flag} must be at least 1, got {n}")
        if not 0 < lo <= hi <= 1:
            raise DplError(f"--pose-scale must be a range LO,HI of canvas fractions with 0 < LO <= HI <= 1, got "
                           f"{lo:g},{hi:g}")
        if not 0 <= self.rotation <= 180:
            raise DplError(f"--pose-rotation is a largest angle in degrees in [0, 180], got {self.rotation:g}")
        if not 0 <= self.clutter <= 16:
            raise DplError(f"--clutter must be between 0 and 16 distractors, got {self.clutter}")
        if not 0 <= self.truncation <= 1:
            raise DplError(f"--truncation is a probability in [0, 1], got {self.truncation:g}")
        if self.seed < 0:
            raise DplError(f"--pose-seed must be a non-negative integer, got {self.seed}")
        gap = self.canvas * lo * MIN_GAP
        if gap < 1:
            raise DplError(f"--canvas {self.canvas} with --pose-scale {lo:g},{hi:g} puts hand and face keypoints "
                           f"{gap:.2f} px apart, under 1 px: a --canvas of at least {int(np.ceil(1 / (lo * MIN_GAP)))} "
                           f"or a --pose-scale LO of at least {1 / (self.canvas * MIN_GAP):.2f}")


@dataclass
class PoseData:
    images: torch.Tensor               # uint8 (N, C, H, W)
    keypoints: torch.Tensor            # float32 (N, K, 3): x, y in pixels (pixel i covers [i, i + 1)), visibility 0/1/2
    boxes: torch.Tensor                # float32 (N, 4) x1, y1, x2, y2: each figure's tight box within the canvas
    names: list[str]                   # the K keypoints: NAMES here
    skeleton: list[tuple[int, int]]    # limbs as pairs of keypoint indices
    flip_pairs: list[tuple[int, int]]  # (left, right) index pairs that a horizontal flip swaps
    parts: dict[str, list[int]]        # body, hands, face: every keypoint in one
    sigmas: list[float]                # OKS sigma of each keypoint
    record: dict                       # the data record for meta["data"]: spec, split, n, poses, fingerprint, ...
    notes: tuple[str, ...] = ()        # what was passed over, one line each, for the CLI to say
    masks: torch.Tensor | None = None  # uint8 (N, H, W): the figure's own coverage of each pixel, 0-255
    crops: torch.Tensor | None = None  # float64 (N, 4): x0, y0, scale, image id of crops (coco_keypoints.py)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def spec(self) -> str:
        return self.record["spec"]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def _with(self, images, keypoints, boxes, masks, crops=None, **record) -> PoseData:
        record = {**self.record, **record, "n": len(images)}
        record["fingerprint"] = fingerprint(record, images, keypoints, boxes)
        return replace(self, images=images, keypoints=keypoints, boxes=boxes, masks=masks, crops=crops, record=record)

    def subset(self, index: torch.Tensor) -> PoseData:
        index = torch.as_tensor(index, dtype=torch.int64)
        masks = None if self.masks is None else self.masks[index]
        crops = None if self.crops is None else self.crops[index]
        return self._with(self.images[index], self.keypoints[index], self.boxes[index], masks, crops)

    def held_out(self, n: int | None, seed: int) -> tuple[PoseData, PoseData | None]:
        """(the rest, `n` images drawn by a permutation seeded `seed`) for --val; (self, None) when n is None."""
        return held_out_images(self, n, seed)

    def flipped(self) -> PoseData:
        """The data mirrored left to right: images, masks, boxes, and keypoints with left and right swapped; no
        crops (a mirrored crop no longer maps back by x0, y0 and scale)."""
        w = self.images.shape[-1]
        boxes = torch.stack([w - self.boxes[:, 2], self.boxes[:, 1], w - self.boxes[:, 0], self.boxes[:, 3]], 1)
        masks = None if self.masks is None else self.masks.flip(-1)
        return self._with(self.images.flip(-1), flip_keypoints(self.keypoints, w, self.flip_pairs), boxes, masks,
                          flipped=not self.record.get("flipped", False))


def flip_keypoints(keypoints: torch.Tensor, width: float, flip_pairs) -> torch.Tensor:
    """Keypoints (..., K, 3) of images `width` pixels wide, mirrored left to right: x -> width - x (pixel i covers
    [i, i + 1)), each (left, right) pair of `flip_pairs` swapped."""
    order = list(range(keypoints.shape[-2]))
    for i, j in flip_pairs:
        order[i], order[j] = j, i
    out = keypoints[..., order, :].clone()
    out[..., 0] = width - out[..., 0]
    return out


def _check_source(source: str) -> None:
    _, split = data.parse_spec(source)
    if split or len(data.union_members(source)) > 1 or data.is_image_files(source):
        raise DplError(f"{POSES}:{source}: figures are textured from a single source held in memory (digits, "
                       f"fashion-mnist, ...), its split given after it: {POSES}:SOURCE:SPLIT")


def is_pose_spec(spec: str) -> bool:
    """Whether a data spec names poses: `poses[:SOURCE][:SPLIT]`."""
    return spec.partition(":")[0] == POSES


def parse_pose_spec(spec: str) -> tuple[str | None, str | None]:
    """`poses[:SOURCE][:SPLIT]` -> (source or None for procedural textures, split or None)."""
    kind, colon, rest = spec.partition(":")
    parts = rest.split(":") if colon else []
    split = parts.pop() if parts and parts[-1] in data.SPLITS else None
    if kind != POSES or len(parts) > 1 or "" in parts:
        raise DplError(f"{spec}: not a poses spec; {POSES}[:SOURCE][:SPLIT], e.g. {POSES}, {POSES}:test, "
                       f"{POSES}:fashion-mnist:test")
    if split not in (None, "train", "test"):
        raise DplError(f"{spec}: poses are built for a train or test split, not {split!r}")
    if parts:
        _check_source(parts[0])
    return (parts[0] if parts else None), split


def load_poses(spec: str, split: str, pose: PoseSpec | None = None) -> PoseData:
    """The poses a spec names; `split` is the default where the spec has none; `pose` how they are made (its
    source is the spec's; None: PoseSpec's defaults)."""
    source, given = parse_pose_spec(spec)
    return build_poses(replace(pose, source=source) if pose else PoseSpec(source=source), given or split)


def pose_spec_of(record: dict) -> PoseSpec | None:
    """The PoseSpec a data record (meta["data"]) was built by; None for data that is not poses."""
    made = record.get("poses") if isinstance(record, dict) else None
    if made is None:
        return None
    try:
        return PoseSpec(**made)
    except (TypeError, ValueError) as e:
        raise DplError(f"corrupt metadata value for 'data.poses' ({e})") from None


def fingerprint(record: dict, images: torch.Tensor, keypoints: torch.Tensor, boxes: torch.Tensor) -> str:
    h = hashlib.sha256(json.dumps({k: record.get(k) for k in ("spec", "poses", "flipped")}, sort_keys=True).encode())
    for t in (images, keypoints, boxes):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def pose_stream(spec: PoseSpec, split: str) -> np.random.Generator:
    return np.random.default_rng([spec.seed, zlib.crc32((spec.source or "").encode()), zlib.crc32(split.encode())])


def build_poses(spec: PoseSpec, split: str) -> PoseData:
    """`spec.count` (train) or `spec.test_count` (test) figures, as core/data/pose_figures.py says."""
    if split not in ("train", "test"):
        raise DplError(f"poses are built for a train or test split, not {split!r}")
    ds = data.load(f"{spec.source}:{split}", stream=False) if spec.source else None
    c, side = (ds.shape[0] if ds is not None else 1), spec.canvas
    count, flag = (spec.count, "--poses") if split == "train" else (spec.test_count, "--test-poses")
    memory.check_fits(count * ((c + 1) * side ** 2 + 4096 + 256 * spec.clutter) + 64 * c * CHUNK_PIXELS * 4,
                      f"{flag} {count:,}: {count:,} figures of {c}x{side}x{side}")
    rng = pose_stream(spec, split)
    fig = pose_figures.figures(spec, count, rng)
    scene = pose_figures.scene(spec, count, c, len(ds) if ds is not None else 0, rng)
    images = torch.empty(count, c, side, side, dtype=torch.uint8)
    masks = torch.empty(count, side, side, dtype=torch.uint8)
    hidden = np.zeros((count, K), dtype=bool)
    dark = ds is not None and bool(ds.images[:256, :, [0, -1]].float().mean() < 25)     # top and bottom rows
    step = max(1, CHUNK_PIXELS // side ** 2)
    for start in range(0, count, step):
        at = slice(start, min(start + step, count))
        part = {k: v[at] for k, v in fig.items()}
        images[at], masks[at], front = pose_figures.render(part, {k: v[at] for k, v in scene.items()}, side, c, ds,
                                                           dark, rng)
        hidden[at] = front | pose_figures.covered(part)
    xy = fig["points"][:, :K]
    inside = ((xy >= 0) & (xy < side)).all(-1)
    visibility = np.where(inside, np.where(hidden, 1, 2), 0)
    keypoints = torch.from_numpy(np.concatenate([xy, visibility[..., None]], -1).astype(np.float32))
    lit = masks >= 51                               # a fifth
    boxes = torch.stack([*_extent(lit.any(1), side), *_extent(lit.any(2), side)], 1)[:, [0, 2, 1, 3]]
    over = fig["over"]
    record = {"spec": f"{POSES}:{spec.source}:{split}" if spec.source else f"{POSES}:{split}", "split": split,
              "poses": asdict(spec), "keypoints": K, "truncated": int(over.sum()), "image_size": [side, side]}
    if ds is not None:
        record["source"] = ds.describe()
    record["n"] = count
    record["fingerprint"] = fingerprint(record, images, keypoints, boxes)
    return PoseData(images, keypoints, boxes, list(NAMES), list(SKELETON), list(FLIP_PAIRS),
                    {k: list(v) for k, v in PARTS.items()}, list(SIGMAS), record, masks=masks)


def _extent(lit: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last + 1) lit index of each row of (N, side) flags: a box's low and high edges in pixels."""
    first = lit.float().argmax(1)
    last = side - lit.flip(1).float().argmax(1)
    empty = ~lit.any(1)
    return torch.where(empty, 0, first).float(), torch.where(empty, 0, last).float()
