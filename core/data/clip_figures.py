"""Synthetic clips: `clips[:SOURCE][:SPLIT]`, the figures of `poses:` (core/data/pose_figures.py) performing actions,
and `moving:SOURCE[:SPLIT]`, objects of a classification source moving over a background.

Actions (ACTIONS, 10) are joint-angle trajectories: each joint's angle at frame t of T is its rest angle plus
amplitude * sin(2 pi * cycles * t / T + phase), in degrees. Some pairs differ only in detail, as fine-grained sports
actions do: waving or raising the left vs the right arm (the figure's own left: it faces the camera, so its left arm
is on the image's right), slow vs fast squats (1 vs 2.5 cycles a clip), jumping jacks vs flapping the arms alone
(the legs still), side steps, and shaking the head (only the face's keypoints move). Per clip, every rest angle is
jittered by N(0, 5 degrees), amplitudes scaled by U(0.8, 1.2), cycles by U(0.85, 1.15), the phase drawn uniformly,
and each frame adds N(0, 2 degrees) to every angle. A squat keeps the feet on the ground: the figure is placed by
its ankles, so bending lowers the pelvis.

A clip's figure (segment lengths, thickness, materials, drawing order) and scene (texture maps, colours,
distractors) are drawn once and kept over its frames. The camera: the figure's standing height is a fraction of
the canvas drawn in `scale` and drifts linearly by up to `drift` of itself over the clip, its place drifts by up
to `drift` of the canvas, the whole figure turns by up to `rotation` degrees (fixed per clip), and each frame
the view shakes by N(0, `jitter`) pixels (figure, background and distractors move together: the frame is cut from
a larger canvas). Distractors (up to `clutter`) move on their own: each drifts and turns at its own speed. Pixel
noise is drawn per frame. Keypoint visibility and boxes follow `poses:` (core/data/poses.py).

Every clip has its own random stream (seed, source, split, clip index), and a frame is a function of (clip, t):
frames are rendered when asked for, so any frame of any clip can be made alone and a clip set of any size takes
no memory beyond the frames asked for. Action classes are balanced: clip i of a split has action i mod A under a
permutation drawn from the split's stream.

`moving:SOURCE`: 1 to 3 objects (source images pasted at 30-50 % of the canvas, their own shape as alpha on a
dark-background source, else the whole square) moving in straight lines at up to `speed` pixels a frame and
bouncing off the canvas edges, over a procedural texture map that drifts with the camera; the clip's class is
its first (largest, front-most) object's.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import DplError, data
from . import pose_figures
from .clips import ClipSet
from .pose_figures import FLIP_PAIRS, K, NAMES, PARTS, SIGMAS, SKELETON  # noqa: F401

CLIPS, MOVING = "clips", "moving"
CHUNK_PIXELS = 128 * 64 * 64     # canvas pixels rendered at once

_REST = {"lean": 0., "roll": 0., "yaw": 0., "shoulder": (12., 12.), "elbow": (10., 10.), "wrist": (0., 0.),
         "hip": (6., 6.), "knee": (-4., -4.), "foot": (60., 60.)}
# action -> joint -> (rest, amplitude, cycles per clip, phase offset in turns); a per-side joint takes
# (left, right) pairs where they differ. A joint not named keeps its rest angle.
ACTIONS: dict[str, dict[str, tuple]] = {
    "wave_left": {"shoulder": ((150., 12.), (0., 0.), 1., 0.), "elbow": ((0., 10.), (40., 0.), 2.5, 0.)},
    "wave_right": {"shoulder": ((12., 150.), (0., 0.), 1., 0.), "elbow": ((10., 0.), (0., 40.), 2.5, 0.)},
    "raise_left": {"shoulder": ((85., 12.), (75., 0.), 1., 0.)},
    "raise_right": {"shoulder": ((12., 85.), (0., 75.), 1., 0.)},
    "squat_slow": {"hip": ((35., 35.), (30., 30.), 1., 0.), "knee": ((-45., -45.), (40., 40.), 1., .5)},
    "squat_fast": {"hip": ((35., 35.), (30., 30.), 2.5, 0.), "knee": ((-45., -45.), (40., 40.), 2.5, .5)},
    "jumping_jack": {"shoulder": ((85., 85.), (75., 75.), 2., 0.), "hip": ((18., 18.), (14., 14.), 2., 0.)},
    "arm_flap": {"shoulder": ((85., 85.), (75., 75.), 2., 0.)},
    "side_step": {"hip": ((18., 18.), (16., -16.), 1.5, 0.), "knee": ((-10., -10.), (8., -8.), 1.5, .5)},
    "head_shake": {"yaw": (0., 28., 3., 0.), "roll": (0., 6., 1.5, 0.)},
}
_SIDED = ("shoulder", "elbow", "wrist", "hip", "knee", "foot")


@dataclass(frozen=True, kw_only=True)
class ClipSpec:
    """How synthetic clips are made (the module docstring says how)."""

    source: str | None = None               # clips: texture source (None: procedural); moving: the objects' source
    canvas: int = 64                        # square frame side, pixels
    count: int = 400                        # train clips
    test_count: int = 200                   # test clips
    frames: int = 16                        # frames per clip
    scale: tuple[float, float] = (.55, .85)  # standing height as a fraction of the canvas
    rotation: float = 10.                   # largest whole-figure rotation, degrees
    clutter: int = 2                        # most distractors per clip
    truncation: float = 0.                  # (read by the figures' scene; clips keep figures whole)
    jitter: float = 1.                      # camera shake, pixels (standard deviation per frame)
    drift: float = .15                      # scale and place drift over a clip
    speed: float = 2.                       # moving: largest object speed, pixels a frame
    seed: int = 0

    def __post_init__(self):
        for name, flag in (("canvas", "--canvas"), ("count", "--clips"), ("test_count", "--test-clips"),
                           ("frames", "--frames"), ("clutter", "--clutter"), ("seed", "--clip-seed")):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise DplError(f"{flag} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        for name in ("rotation", "jitter", "drift", "speed", "truncation"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not 16 <= self.canvas <= 256:
            raise DplError(f"--canvas of clips must be between 16 and 256, got {self.canvas}")
        for flag, n in (("--clips", self.count), ("--test-clips", self.test_count)):
            if n < 1:
                raise DplError(f"{flag} must be at least 1, got {n}")
        if not 2 <= self.frames <= 256:
            raise DplError(f"--frames must be between 2 and 256, got {self.frames}")
        lo, hi = self.scale
        if len(self.scale) != 2 or not 0 < lo <= hi <= 1:
            raise DplError(f"--pose-scale must be a range LO,HI of canvas fractions with 0 < LO <= HI <= 1, got "
                           f"{self.scale}")
        if not 0 <= self.clutter <= 8:
            raise DplError(f"--clutter must be between 0 and 8 distractors, got {self.clutter}")
        for name, value, top in (("--jitter", self.jitter, self.canvas / 8), ("--drift", self.drift, .5),
                                 ("--speed", self.speed, self.canvas / 4), ("--pose-rotation", self.rotation, 90)):
            if not 0 <= value <= top:
                raise DplError(f"{name} must be between 0 and {top:g}, got {value:g}")


@dataclass(eq=False)
class SyntheticClips(ClipSet):
    """Synthetic clips, rendered on demand."""

    made: ClipSpec = None
    split: str = "train"
    kind: str = CLIPS
    texture: object = None              # the source's Dataset (held in memory) or None
    dark: bool = False
    row_labels: np.ndarray = None       # the class of every underlying clip (rows index it)

    @property
    def has_keypoints(self) -> bool:
        return self.kind == CLIPS

    @property
    def keypoint_set(self) -> dict:
        return {"names": list(NAMES), "skeleton": [list(p) for p in SKELETON], "flip_pairs": [list(p) for p in FLIP_PAIRS],
                "parts": {k: list(v) for k, v in PARTS.items()}, "sigmas": list(SIGMAS)}

    def _frames(self, rows, times):
        return self._render(rows, times)["frames"]

    def poses(self, clips, times) -> dict[str, torch.Tensor]:
        """Frames (n, m, C, S, S) uint8, keypoints (n, m, K, 3) (x, y, visibility) and figure boxes (n, m, 4) of
        frames `times` (n, m) of clip rows `clips` (n,)."""
        if not self.has_keypoints:
            raise DplError(f"{self.spec}: moving objects have no keypoints")
        clips = np.asarray(clips, dtype=np.int64).reshape(-1)
        times = np.asarray(times, dtype=np.int64).reshape(len(clips), -1)
        if ((times < 0) | (times >= self.lengths[clips][:, None])).any():
            raise IndexError("frame index outside its clip")
        return self._render(self.rows[clips], times)

    def _render(self, rows: np.ndarray, times: np.ndarray) -> dict[str, torch.Tensor]:
        n, m = times.shape
        c, side = self.channels, self.size
        frames = torch.empty(n, m, c, side, side, dtype=torch.uint8)
        keypoints = torch.zeros(n, m, K, 3)
        boxes = torch.zeros(n, m, 4)
        per = max(1, CHUNK_PIXELS // (side * side * max(m, 1)))
        for start in range(0, n, per):
            at = slice(start, min(start + per, n))
            out = (_render_figures if self.kind == CLIPS else _render_moving)(self, rows[at], times[at])
            frames[at] = out["frames"]
            if "keypoints" in out:
                keypoints[at], boxes[at] = out["keypoints"], out["boxes"]
        return {"frames": frames, "keypoints": keypoints, "boxes": boxes}


def clip_stream(spec: ClipSpec, split: str, kind: str, *index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, zlib.crc32(f"{kind}:{spec.source or ''}".encode()),
                                  zlib.crc32(split.encode()), *index])


def build_clips(spec: ClipSpec, split: str, kind: str = CLIPS) -> SyntheticClips:
    """The clips of a split: their count, lengths and action labels; frames are rendered when asked for."""
    if split not in ("train", "test"):
        raise DplError(f"{kind} clips are built for a train or test split, not {split!r}")
    if kind == MOVING and spec.source is None:
        raise DplError(f"{MOVING}:SOURCE names the classification source whose objects move, e.g. {MOVING}:digits")
    ds = data.load(f"{spec.source}:{split}", stream=False) if spec.source else None
    count = spec.count if split == "train" else spec.test_count
    if kind == CLIPS:
        classes = list(ACTIONS)
        labels = clip_stream(spec, split, kind).permutation(np.arange(count) % len(classes))
    else:
        classes = list(ds.classes)
        labels = np.array([_moving_plan(spec, split, ds, i)["classes"][0] for i in range(count)])
    c = ds.shape[0] if ds is not None else 1
    name = f"{kind}:{spec.source}:{split}" if spec.source else f"{kind}:{split}"
    record = {"spec": name, "split": split, "clips": asdict(spec), "kind": kind, "n": count, "frames": spec.frames,
              "image_size": [spec.canvas, spec.canvas], "classes": classes}
    if kind == CLIPS:
        record["keypoints"] = K
    if ds is not None:
        record["source"] = ds.describe()
    record["fingerprint"] = hashlib.sha256(json.dumps({k: record[k] for k in ("spec", "clips", "kind")},
                                                      sort_keys=True).encode()).hexdigest()
    dark = ds is not None and bool(ds.images[:256, :, [0, -1]].float().mean() < 25)
    if kind == MOVING and ds is not None:        # digits' 8 x 8 rows reach the glyph: read all four borders
        sample = ds.images[:256].float()
        dark = bool(torch.cat([sample[:, :, [0, -1]].flatten(), sample[..., [0, -1]].flatten()]).mean() < 80)
    return SyntheticClips(spec=name, record=record, lengths=np.full(count, spec.frames, dtype=np.int64),
                          labels=torch.from_numpy(labels.astype(np.int64)), classes=classes, channels=c,
                          size=spec.canvas, made=spec, split=split, kind=kind, texture=ds, dark=dark,
                          row_labels=labels.astype(np.int64))


# ---- figures performing actions ----------------------------------------------------------------------

def _plan(clips: SyntheticClips, row: int) -> dict:
    """What clip `row` keeps over its frames: action, trajectory parameters, body, placement, scene."""
    spec = clips.made
    rng = clip_stream(spec, clips.split, clips.kind, row)
    action = ACTIONS[clips.classes[int(clips.row_labels[row])]]
    joints = {}
    for joint, rest in _REST.items():
        base, amp, cycles, turn = action.get(joint, (rest, 0., 1., 0.))
        shape = (2,) if joint in _SIDED else ()
        joints[joint] = (np.asarray(base, float) + rng.normal(0, 5, shape), np.asarray(amp, float)
                         * rng.uniform(.8, 1.2), cycles * rng.uniform(.85, 1.15), turn)
    body = pose_figures.sample_body(rng, 1)
    margin = _margin(spec)
    big = spec.canvas + 2 * margin
    fig_spec = _FigureSpec(canvas=big, clutter=spec.clutter, truncation=0.)
    scene = pose_figures.scene(fig_spec, 1, clips.channels, len(clips.texture) if clips.texture is not None else 0,
                               rng)
    scene["noise"][:] = 0                                       # pixel noise is drawn per frame below
    maps = pose_figures.texture_maps(rng, 4, big, clips.texture)
    rank = np.zeros((1, len(pose_figures.GROUPS)))
    rank[:, :2] = rng.random((1, 2))
    rank[:, 2:4] = np.where(rng.random((1, 2)) < .5, 4, 1) + rng.random((1, 2))
    rank[:, 4:] = [2, 3]
    order = np.lexsort((np.arange(len(pose_figures.SLOT_GROUP))[None], rank[:, pose_figures.SLOT_GROUP]))
    material = np.where(pose_figures._FOREARMS & (rng.random(1) < .5)[:, None], pose_figures.TOP,
                        pose_figures.SLOT_MATERIAL)
    height = rng.uniform(*spec.scale) * spec.canvas / (1 + spec.drift)
    return {"joints": joints, "phase": rng.uniform(0, 2 * np.pi), "body": body, "rank": rank, "order": order,
            "material": material, "height": height, "grow": rng.uniform(-spec.drift, spec.drift),
            "turn": np.radians(rng.uniform(-spec.rotation, spec.rotation)),
            "place": np.array([rng.uniform(.38, .62), rng.uniform(.47, .53)]),
            "move": rng.uniform(-spec.drift, spec.drift, 2) * [1, .2],
            "scene": scene, "maps": maps, "margin": margin,
            "spin": rng.uniform(-.1, .1, spec.clutter), "slide": rng.uniform(-1.5, 1.5, (spec.clutter, 2))}


def _margin(spec: ClipSpec) -> int:
    """Pixels around the frame that the camera's shake can bring into view."""
    return int(np.ceil(3 * spec.jitter)) + 1


@dataclass(frozen=True)
class _FigureSpec:
    canvas: int
    clutter: int
    truncation: float


def _angles(plan: dict, t: np.ndarray, frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Joint angles (radians) at frames t (m,) of a clip: lean, roll, yaw (m,), limb joints (m, 2)."""
    out = {}
    for joint, (base, amp, cycles, turn) in plan["joints"].items():
        wave = np.sin(2 * np.pi * (cycles * t / frames + turn) + plan["phase"])
        wave = wave[:, None] if base.ndim else wave
        out[joint] = np.radians(base + amp * wave + rng.normal(0, 2, (len(t), *base.shape)))
    return out


def _render_figures(clips: SyntheticClips, rows: np.ndarray, times: np.ndarray) -> dict[str, torch.Tensor]:
    spec, c = clips.made, clips.channels
    n, m = times.shape
    figs, scenes, maps, shifts, noise_rngs = [], [], [], [], []
    for row, ts in zip(rows, times):
        plan = _plan(clips, int(row))
        frame_rng = [clip_stream(spec, clips.split, clips.kind, int(row), int(t) + 1) for t in ts]
        angles = [_angles(plan, np.array([t]), spec.frames, r) for t, r in zip(ts, frame_rng)]
        angles = {k: np.concatenate([a[k] for a in angles]) for k in angles[0]}
        body = {k: (np.repeat(v, m, 0) if k != "size" else {s: np.repeat(x, m) for s, x in v.items()})
                for k, v in plan["body"].items()}
        points = pose_figures.pose_points(angles, body)                    # (m, P, 2) standing units
        points = pose_figures._rot(points, np.full(m, plan["turn"]))
        progress = ts / max(spec.frames - 1, 1)
        scale = plan["height"] * (1 + plan["grow"] * progress) / pose_figures.STANDING   # pixels per unit
        ankles = points[:, [NAMES.index("left_ankle"), NAMES.index("right_ankle")]].mean(1)
        # the ankles rest on the ground line, half a standing height below `place`, the pelvis above `place`'s x
        ground = (plan["place"] + plan["move"] * progress[:, None]) * spec.canvas + plan["margin"]
        ground = ground + np.stack([np.zeros(m), .5 * pose_figures.STANDING * scale], 1)
        anchor = np.stack([np.zeros(m), ankles[:, 1]], 1)
        points = (points - anchor[:, None]) * scale[:, None, None] + ground[:, None]
        radius = pose_figures.SLOT_R * np.where(pose_figures._THICK, plan["body"]["thick"][:, None], 1) * scale[:, None]
        figs.append({"points": points, "radius": radius, "rank": np.repeat(plan["rank"], m, 0),
                     "order": np.repeat(plan["order"], m, 0), "material": np.repeat(plan["material"], m, 0)})
        scene = {k: np.repeat(v, m, 0) for k, v in plan["scene"].items()}
        scene["ends"] = scene["ends"] + (ts[:, None, None, None] * plan["slide"][None, :, None, :])
        scene["centre"] = scene["centre"] + ts[:, None, None] * plan["slide"][None]
        scene["angle"] = scene["angle"] + ts[:, None] * plan["spin"][None]
        scenes.append(scene)
        maps.append(plan["maps"].repeat(m, 1, 1, 1))
        shifts.append(np.stack([np.clip(np.rint(r.normal(0, spec.jitter, 2)), -plan["margin"], plan["margin"])
                                for r in frame_rng]).astype(np.int64) + plan["margin"])
        noise_rngs.extend(frame_rng)
    fig = {k: np.concatenate([f[k] for f in figs]) for k in figs[0]}
    scene = {k: np.concatenate([s[k] for s in scenes]) for k in scenes[0]}
    big = spec.canvas + 2 * _margin(spec)
    images, masks, front = pose_figures.render(fig, scene, big, c, clips.texture, clips.dark,
                                               np.random.default_rng(0), torch.cat(maps))
    hidden = front | pose_figures.covered(fig)
    shift = np.concatenate(shifts)                                       # (n m, 2) x, y of the window's corner
    side = spec.canvas
    windows = torch.stack([images[i, :, y:y + side, x:x + side] for i, (x, y) in enumerate(shift)])
    mask = torch.stack([masks[i, y:y + side, x:x + side] for i, (x, y) in enumerate(shift)])
    sd = np.array([r.uniform(0, .03) for r in noise_rngs], dtype=np.float32)
    noise = torch.from_numpy(np.stack([r.standard_normal((c, side, side), dtype=np.float32) for r in noise_rngs]))
    windows = (windows.float() + 255 * torch.from_numpy(sd)[:, None, None, None] * noise).round_().clamp_(0, 255)
    xy = fig["points"][:, :K] - shift[:, None]
    inside = ((xy >= 0) & (xy < side)).all(-1)
    visibility = np.where(inside, np.where(hidden, 1, 2), 0)
    keypoints = torch.from_numpy(np.concatenate([xy, visibility[..., None]], -1).astype(np.float32))
    lit = mask >= 51
    from .poses import _extent
    boxes = torch.stack([*_extent(lit.any(1), side), *_extent(lit.any(2), side)], 1)[:, [0, 2, 1, 3]]
    return {"frames": windows.to(torch.uint8).reshape(n, m, c, side, side),
            "keypoints": keypoints.reshape(n, m, K, 3), "boxes": boxes.reshape(n, m, 4)}


# ---- moving objects ------------------------------------------------------------------------------------

def _moving_plan(spec: ClipSpec, split: str, ds, row: int) -> dict:
    rng = clip_stream(spec, split, MOVING, row)
    k = int(rng.integers(1, 4))
    side = spec.canvas
    size = np.sort(rng.uniform(.3, .5, k) * side)[::-1]
    start = rng.uniform(0, 1, (k, 2)) * (side - size[:, None])
    angle = rng.uniform(0, 2 * np.pi, k)
    velocity = np.stack([np.cos(angle), np.sin(angle)], 1) * rng.uniform(.4, 1, (k, 1)) * spec.speed
    image = rng.integers(0, len(ds), k)
    return {"image": image, "classes": ds.labels[torch.from_numpy(image)].numpy(), "size": size, "start": start,
            "velocity": velocity, "rng": rng}


def _bounce(x: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Positions x moving freely, folded into [0, top] as if bouncing off both ends."""
    period = 2 * np.maximum(top, 1e-6)
    x = np.mod(x, period)
    return np.where(x > top, period - x, x)


def _render_moving(clips: SyntheticClips, rows: np.ndarray, times: np.ndarray) -> dict[str, torch.Tensor]:
    spec, ds, c, side = clips.made, clips.texture, clips.channels, clips.size
    out = torch.empty(len(rows), times.shape[1], c, side, side, dtype=torch.uint8)
    for j, (row, ts) in enumerate(zip(rows, times)):
        plan = _moving_plan(spec, clips.split, ds, int(row))
        rng = plan["rng"]
        background = pose_figures.texture_maps(rng, 1, 2 * side, None)[0]       # (1, 2S, 2S): the camera pans it
        lo, hi = np.sort(rng.uniform(0, .6, 2))
        pan = rng.uniform(0, side / 2, 2) + np.outer(ts, rng.uniform(-.5, .5, 2))
        pan = np.clip(np.rint(pan), 0, side).astype(np.int64)
        frames = torch.stack([background[:, y:y + side, x:x + side] for x, y in pan])         # (m, 1, S, S)
        frames = (lo + (hi - lo) * frames).expand(-1, c, -1, -1).clone()
        for i in reversed(range(len(plan["image"]))):                   # the first object is painted last: in front
            src = ds.images[int(plan["image"][i])].float() / 255
            s = int(round(plan["size"][i]))
            obj = F.interpolate(src[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
            alpha = (obj.mean(0, keepdim=True) * 3).clamp(0, 1) if clips.dark else torch.ones(1, s, s)
            top = side - s
            pos = _bounce(plan["start"][i] + np.outer(ts, plan["velocity"][i]), np.array([top, top]))
            pos = np.rint(pos).astype(np.int64)
            for f, (x, y) in enumerate(pos):
                region = frames[f, :, y:y + s, x:x + s]
                frames[f, :, y:y + s, x:x + s] = region + alpha * (obj - region)
        noise = torch.from_numpy(np.stack([clip_stream(spec, clips.split, MOVING, int(row), int(t) + 1)
                                           .standard_normal((c, side, side), dtype=np.float32) for t in ts]))
        out[j] = (frames * 255 + 4 * noise).round_().clamp_(0, 255).to(torch.uint8)
    return {"frames": out}


def parse_clip_spec(spec: str) -> tuple[str, str | None, str | None]:
    """`clips[:SOURCE][:SPLIT]` or `moving:SOURCE[:SPLIT]` -> (kind, source or None, split or None)."""
    kind, colon, rest = spec.partition(":")
    parts = rest.split(":") if colon else []
    split = parts.pop() if parts and parts[-1] in data.SPLITS else None
    if kind not in (CLIPS, MOVING) or len(parts) > 1 or "" in parts or (kind == MOVING and not parts):
        raise DplError(f"{spec}: not a clip spec; {CLIPS}[:SOURCE][:SPLIT] or {MOVING}:SOURCE[:SPLIT], e.g. "
                       f"{CLIPS}, {CLIPS}:test, {MOVING}:digits")
    if split not in (None, "train", "test"):
        raise DplError(f"{spec}: synthetic clips are built for a train or test split, not {split!r}")
    if parts:
        source = parts[0]
        _, inner = data.parse_spec(source)
        if inner or len(data.union_members(source)) > 1 or data.is_image_files(source):
            raise DplError(f"{spec}: objects and textures come from a single source held in memory (digits, "
                           f"fashion-mnist, ...), its split given after it: {kind}:SOURCE:SPLIT")
    return kind, (parts[0] if parts else None), split
