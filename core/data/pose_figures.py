"""The figures of `poses:` (core/data/poses.py): their keypoint set, kinematic geometry, posing and drawing.

Keypoints (NAMES, 32): 15 body joints (head centre, neck, shoulders, elbows, wrists, pelvis, hips, knees, ankles),
per hand a palm centre and 5 fingertips (the wrist is a body joint), and a face of eyes, nose tip and mouth corners.
Left and right are the figure's own: it faces the camera, so its left side starts on the image's right. SIGMAS are
COCO's OKS sigmas where COCO has the point (nose, eyes, shoulders, elbows, wrists, hips, knees, ankles); the neck and
head centre take the shoulders' 0.079, the pelvis the hips' 0.107, mouth corners and palms 0.025, fingertips 0.02.

A figure is a kinematic tree in units of its standing height (head top to ankles, STANDING), built with the pelvis
at the origin, x to the right and y down. Segment lengths (LENGTH) each vary by up to LENGTH_JITTER per figure,
body capsules' thickness by THICKNESS, and each arm and leg segment is foreshortened by a factor in FORESHORTEN (it
points out of the image plane). Angles are drawn uniformly within LIMITS (degrees): the upper body leans about the
pelvis, the head rolls about the neck and turns (yaw: its features lie on a sphere of the head's radius, FEATURES,
and move sideways), shoulders swing from hanging (0) to overhead (170) or across the body (-20), elbows bend either
way (a 3-D flexion seen in projection), wrists bend, hips swing out, knees bend mostly inward, feet point out. A
hand is a palm (wrist to palm centre, PALM) with 5 fingers fanned from the palm centre by a spread factor in SPREAD,
wider than real fingers (about 32 degrees apart) so that their tips stay resolvable. Head and hands keep their
size: a hand spans about a tenth of the standing height (5 px at the default canvas), the face less. MIN_GAP is the
least distance between two points of a hand or of the face; a spec whose smallest figure puts them under 1 px
apart is refused. The whole figure then turns by up to `rotation` degrees and is scaled so that its standing
height is a fraction of the canvas drawn uniformly in `scale`.

Placement: with probability `truncation` a figure is cut by a canvas edge (a side drawn uniformly, 10 to 50 % of
its extent outside); otherwise it is shrunk, never below the smallest `scale`, to fit whole and placed uniformly
(a figure that still does not fit overflows evenly). The record counts figures that reach outside the canvas.

Drawing: each part is a capsule (a segment with a radius; a disc when its ends meet), painted back to front with
analytic antialiasing: a pixel's coverage by a capsule of radius r at distance d from the pixel's centre is
min(2r, 1) * clamp(max(r, 1/2) + 1/2 - d, 0, 1), so thin fingers and facial features stay faint lines and dots.
Parts form groups (GROUPS: each leg, each arm, the torso, the head) painted whole, in this order: the legs (in
random order), the arms drawn behind the body, the torso (hip bar, trunk, shoulder bar), the head (neck, head
disc, eye dots, a nose line, a mouth line), then the arms drawn in front; each arm is behind or in front with
probability 1/2. Materials: skin (head, neck, hands, bare forearms), a top (trunk, shoulders, upper arms, forearms
of long sleeves, one figure in two) and a bottom (hips, legs, feet) are texture maps, each mapped into an
intensity range (per channel for an RGB source) drawn per figure; the face is the skin darkened or lightened by
0.35. Texture maps are images of the source's split (SOURCE: any single classification source held in memory)
zoomed, turned and shifted at random, or with no SOURCE procedural ones (smooth noise at two scales and a grating,
mixed at random). The background is such a map under a linear gradient; up to `clutter` distractors per image
(their count drawn uniformly from 0) are strokes and blobs of limb-like thickness or, with a SOURCE, one in two
source images pasted at a random size and angle (their shape as alpha on a dark-background source, else the whole
square); each goes behind the figure or, one in three, in front of it. Last, Gaussian pixel noise of a standard
deviation drawn per image up to 4 % of the range. Nothing keeps figure and background apart in intensity: some
figures are faint, as in photographs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .poses import PoseSpec

_SIDES = ("left", "right")
_FINGERS = ("thumb", "index", "middle", "ring", "pinky")
BODY_NAMES = ["head", "neck", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
              "right_wrist", "pelvis", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
HAND_NAMES = [f"{s}_{p}" for s in _SIDES for p in ["palm", *(f"{f}_tip" for f in _FINGERS)]]
FACE_NAMES = ["left_eye", "right_eye", "nose", "left_mouth", "right_mouth"]
NAMES = BODY_NAMES + HAND_NAMES + FACE_NAMES
K = len(NAMES)
_I = {n: i for i, n in enumerate(NAMES)}
PARTS = {"body": list(range(15)), "hands": list(range(15, 27)), "face": list(range(27, 32))}
SKELETON = [(_I[a], _I[b]) for a, b in [
    ("head", "neck"), ("neck", "left_shoulder"), ("neck", "right_shoulder"), ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("neck", "pelvis"), ("pelvis", "left_hip"), ("pelvis", "right_hip"), ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    *((f"{s}_wrist", f"{s}_palm") for s in _SIDES), *((f"{s}_palm", f"{s}_{f}_tip") for s in _SIDES for f in _FINGERS),
    ("head", "nose"), ("nose", "left_eye"), ("nose", "right_eye"), ("left_mouth", "right_mouth")]]
FLIP_PAIRS = [(i, _I["right" + n[4:]]) for i, n in enumerate(NAMES) if n.startswith("left_")]
_SIGMA = {"head": .079, "neck": .079, "shoulder": .079, "elbow": .072, "wrist": .062, "pelvis": .107, "hip": .107,
          "knee": .087, "ankle": .089, "palm": .025, "tip": .02, "eye": .025, "nose": .026, "mouth": .025}
SIGMAS = [_SIGMA[n.split("_")[-1]] for n in NAMES]

# Geometry in figure units, STANDING of them from head top to ankles.
LENGTH = {"torso": .30, "neck": .085, "shoulder": .105, "drop": .02, "hip": .06, "upper_arm": .165,
          "forearm": .145, "thigh": .235, "shin": .225, "foot": .055}
HEAD_R, PALM = .065, .035                 # head radius; wrist to palm centre
STANDING = LENGTH["torso"] + LENGTH["neck"] + HEAD_R + LENGTH["thigh"] + LENGTH["shin"]
FINGER_LENGTH = np.array([.05, .065, .07, .065, .055])      # palm centre to tip, thumb to pinky
FINGER_ANGLE = np.radians([80, 32, 0, -32, -66])            # from the hand's axis, + toward the thumb (left hand)
SPREAD = (.95, 1.25)
# Facial features (azimuth, elevation) in degrees on the head's sphere; the nose line starts at its bridge.
FEATURES = {"left_eye": (30, 8), "right_eye": (-30, 8), "nose": (0, -12), "left_mouth": (25, -42),
            "right_mouth": (-25, -42), "bridge": (0, 6)}
LIMITS = {"lean": (-15, 15), "roll": (-25, 25), "yaw": (-30, 30), "shoulder": (-20, 170), "elbow": (-150, 150),
          "wrist": (-45, 45), "hip": (-20, 80), "knee": (-100, 30), "foot": (40, 90)}
LENGTH_JITTER, THICKNESS, FORESHORTEN = .08, (.85, 1.2), (.7, 1.)

# Points are the keypoints then these; parts ("slots") are capsules between two points.
_EXTRA = ["left_toe", "right_toe", "bridge"]
_P = {n: i for i, n in enumerate(NAMES + _EXTRA)}
GROUPS = ("left_leg", "right_leg", "left_arm", "right_arm", "torso", "head")
SKIN, TOP, BOTTOM, FEATURE = range(4)
_SLOTS = [(f"{s}_{a}", f"{s}_{b}", r, m, f"{s}_leg") for s in _SIDES for a, b, r, m in [
    ("hip", "knee", .048, BOTTOM), ("knee", "ankle", .036, BOTTOM), ("ankle", "toe", .022, BOTTOM)]] + [
    (f"{s}_{a}", f"{s}_{b}", r, m, f"{s}_arm") for s in _SIDES for a, b, r, m in [
        ("shoulder", "elbow", .03, TOP), ("elbow", "wrist", .024, SKIN), ("wrist", "palm", .02, SKIN),
        *(("palm", f"{f}_tip", .008 if f == "thumb" else .007, SKIN) for f in _FINGERS)]] + [
    ("left_hip", "right_hip", .06, BOTTOM, "torso"), ("pelvis", "neck", .075, TOP, "torso"),
    ("left_shoulder", "right_shoulder", .042, TOP, "torso"), ("neck", "head", .028, SKIN, "head"),
    ("head", "head", HEAD_R, SKIN, "head"), ("left_eye", "left_eye", .011, FEATURE, "head"),
    ("right_eye", "right_eye", .011, FEATURE, "head"), ("bridge", "nose", .008, FEATURE, "head"),
    ("left_mouth", "right_mouth", .008, FEATURE, "head")]
SLOT_A = np.array([_P[s[0]] for s in _SLOTS])
SLOT_B = np.array([_P[s[1]] for s in _SLOTS])
SLOT_R = np.array([s[2] for s in _SLOTS])
SLOT_MATERIAL = np.array([s[3] for s in _SLOTS])
SLOT_GROUP = np.array([GROUPS.index(s[4]) for s in _SLOTS])
_THICK = np.array([s[3] in (TOP, BOTTOM) or s[0].endswith(("_elbow", "neck")) for s in _SLOTS])   # body capsules
_FOREARMS = np.array([s[0].endswith("_elbow") for s in _SLOTS])
_MEMBER = np.zeros((K, len(GROUPS)), dtype=bool)        # the groups a keypoint belongs to: ends of their parts
for _a, _b, _g in zip(SLOT_A, SLOT_B, SLOT_GROUP):
    _MEMBER[[p for p in (_a, _b) if p < K], _g] = True


def _d(theta: np.ndarray) -> np.ndarray:
    """Unit vectors at angles (radians) from straight down, + toward the image's right: (..., 2)."""
    return np.stack([np.sin(theta), np.cos(theta)], -1)


def _rot(p: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Points (n, M, 2) turned by phi (n,) the way _d's angles grow."""
    c, s = np.cos(phi)[:, None], np.sin(phi)[:, None]
    return np.stack([p[..., 0] * c + p[..., 1] * s, -p[..., 0] * s + p[..., 1] * c], -1)


def _face(yaw: np.ndarray) -> np.ndarray:
    """The FEATURES (..., 6, 2) of heads turned by yaw (..., 1), about the head's centre, upright."""
    az, el = np.radians(list(FEATURES.values())).T
    x = HEAD_R * np.sin(az + yaw) * np.cos(el)
    return np.stack([x, np.broadcast_to(-HEAD_R * np.sin(el), x.shape)], -1)


def _hand(wrist: np.ndarray, axis: np.ndarray, spread: np.ndarray, sign: int) -> np.ndarray:
    """Palm centre and fingertips (n, 6, 2) of hands at wrist (n, 2) along axis (n,); sign -1 mirrors a left hand."""
    palm = wrist + PALM * _d(axis)
    tips = palm[:, None] + FINGER_LENGTH[:, None] * _d(axis[:, None] + sign * spread[:, None] * FINGER_ANGLE)
    return np.concatenate([palm[:, None], tips], 1)


def _min_gap() -> float:
    """The least distance between two keypoints of one hand (its wrist too) or of the face, in standing heights:
    at the least and the most finger spread, over head turns."""
    def least(p):
        return (np.linalg.norm(p[:, :, None] - p[:, None], axis=-1) + np.eye(p.shape[1]) * 1e9).min()
    hands = np.concatenate([np.zeros((2, 1, 2)), _hand(np.zeros((2, 2)), np.zeros(2), np.array(SPREAD), 1)], 1)
    face = _face(np.radians(np.linspace(*LIMITS["yaw"], 61))[:, None])[:, :len(FACE_NAMES)]
    return min(least(hands), least(face)) / STANDING


MIN_GAP = _min_gap()


# ---- figures ------------------------------------------------------------------------------------------

def _pose(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, K + 3, 2) of n posed figures in standing-height units (pelvis at 0), and thickness factors (n,)."""
    angles = sample_angles(rng, n)
    body = sample_body(rng, n)
    return pose_points(angles, body), body["thick"]


def sample_angles(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Joint angles (radians) drawn uniformly within LIMITS: lean, roll, yaw (n,); each limb joint (n, 2), per side."""
    u = lambda lo, hi, *shape: rng.uniform(lo, hi, (n, *shape))             # noqa: E731
    angles = {k: np.radians(u(*LIMITS[k])) for k in ("lean", "roll", "yaw")}
    return {**angles, **{k: np.radians(u(*LIMITS[k], 2)) for k in ("shoulder", "elbow", "wrist", "hip", "knee", "foot")}}


def sample_body(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """What a figure keeps whatever its pose: segment lengths (n,) each, foreshortening (n, 4, 2) of upper arm,
    forearm, thigh and shin per side, finger spread (n, 2) and capsule thickness (n,)."""
    u = lambda lo, hi, *shape: rng.uniform(lo, hi, (n, *shape))             # noqa: E731
    size = {k: v * u(1 - LENGTH_JITTER, 1 + LENGTH_JITTER) for k, v in LENGTH.items()}
    short = u(*FORESHORTEN, 4, 2)
    spread, thick = u(*SPREAD, 2), u(*THICKNESS)
    return {"size": size, "short": short, "spread": spread, "thick": thick}


def pose_points(angles: dict[str, np.ndarray], body: dict) -> np.ndarray:
    """Points (n, K + 3, 2) in standing-height units (pelvis at 0) of bodies posed at `angles`."""
    lean, roll, yaw = angles["lean"], angles["roll"], angles["yaw"]
    limb, size, short, spread = angles, body["size"], body["short"], body["spread"]
    n = len(lean)
    p = np.zeros((n, len(_P), 2))
    p[:, _P["neck"], 1] = -size["torso"]
    p[:, _P["head"]] = p[:, _P["neck"]] + size["neck"][:, None] * _d(np.pi + roll)
    p[:, [_P[f] for f in FEATURES]] = p[:, None, _P["head"]] + _rot(_face(yaw[:, None]), roll)
    for k, s in enumerate(_SIDES):
        sign = 1 - 2 * k                                                     # the figure's left is +x
        angle = sign * np.cumsum([limb[j][:, k] for j in ("shoulder", "elbow", "wrist")], 0)
        shoulder = p[:, _P["neck"]] + np.stack([sign * size["shoulder"], size["drop"]], -1)
        elbow = shoulder + (size["upper_arm"] * short[:, 0, k])[:, None] * _d(angle[0])
        wrist = elbow + (size["forearm"] * short[:, 1, k])[:, None] * _d(angle[1])
        p[:, [_P[f"{s}_{j}"] for j in ("shoulder", "elbow", "wrist")]] = np.stack([shoulder, elbow, wrist], 1)
        p[:, [_P[h] for h in HAND_NAMES if h.startswith(s)]] = _hand(wrist, angle[2], spread[:, k], sign)
    upper = [_P[q] for q in [*NAMES, "bridge"] if not q.endswith(("hip", "knee", "ankle", "pelvis"))]
    p[:, upper] = _rot(p[:, upper], lean)                                    # the upper body leans about the pelvis
    for k, s in enumerate(_SIDES):
        sign = 1 - 2 * k
        angle = sign * np.cumsum([limb[j][:, k] for j in ("hip", "knee", "foot")], 0)
        hip = np.stack([sign * size["hip"], 0 * size["hip"]], -1)
        knee = hip + (size["thigh"] * short[:, 2, k])[:, None] * _d(angle[0])
        ankle = knee + (size["shin"] * short[:, 3, k])[:, None] * _d(angle[1])
        toe = ankle + size["foot"][:, None] * _d(angle[2])
        p[:, [_P[f"{s}_{j}"] for j in ("hip", "knee", "ankle", "toe")]] = np.stack([hip, knee, ankle, toe], 1)
    return p


def _segment_distance(q: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances from points q (..., 2) to segments a-b (..., 2), broadcast."""
    ab, aq = b - a, q - a
    t = np.clip((aq * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    return np.linalg.norm(aq - t[..., None] * ab, axis=-1)


def figures(spec: PoseSpec, n: int, rng: np.random.Generator) -> dict:
    """Posed and placed figures: points (n, K + 3, 2) in pixels, capsule radii (n, P), the rank of each group in
    drawing order (n, G), the order of the parts (n, P), their materials (n, P), and whether each reaches outside."""
    points, thick = _pose(rng, n)
    points = _rot(points, np.radians(rng.uniform(-spec.rotation, spec.rotation, n)))
    radius = SLOT_R * np.where(_THICK, thick[:, None], 1)
    a, b = points[:, SLOT_A], points[:, SLOT_B]
    lo = (np.minimum(a, b) - radius[..., None]).min(1)
    extent = (np.maximum(a, b) + radius[..., None]).max(1) - lo
    side, least = spec.canvas, spec.scale[0] * spec.canvas / STANDING
    drawn = rng.uniform(*spec.scale, n) * spec.canvas / STANDING                 # pixels per unit
    cut = rng.random(n) < spec.truncation
    scale = np.where(cut, drawn, np.maximum(np.minimum(drawn, .98 * side / extent.max(1)), least))
    size = extent * scale[:, None]
    free = side - size
    offset = np.where(free >= 0, rng.random((n, 2)) * free, free / 2)
    edge, share = rng.integers(0, 4, n), rng.uniform(.1, .5, n)                  # edge: x low, x high, y low, y high
    axis, rows = edge // 2, np.flatnonzero(cut)
    offset[rows, axis[rows]] = np.where(edge[rows] % 2, side - (1 - share[rows]) * size[rows, axis[rows]],
                                        -share[rows] * size[rows, axis[rows]])
    points = (points - lo[:, None]) * scale[:, None, None] + offset[:, None]
    radius = radius * scale[:, None]
    rank = np.zeros((n, len(GROUPS)))
    rank[:, :2] = rng.random((n, 2))                                              # legs
    rank[:, 2:4] = np.where(rng.random((n, 2)) < .5, 4, 1) + rng.random((n, 2))   # arms behind or in front
    rank[:, 4:] = [2, 3]
    order = np.lexsort((np.broadcast_to(np.arange(len(_SLOTS)), (n, len(_SLOTS))), rank[:, SLOT_GROUP]))
    material = np.where(_FOREARMS & (rng.random(n) < .5)[:, None], TOP, SLOT_MATERIAL)
    over = (offset < 0).any(1) | (offset + size > side).any(1)
    return {"points": points, "radius": radius, "rank": rank, "order": order, "material": material, "over": over}


def covered(fig: dict) -> np.ndarray:
    """Which keypoints (n, K) lie inside a capsule of a group painted after every group they belong to."""
    rank, points = fig["rank"], fig["points"]
    owner = np.where(_MEMBER[None], rank[:, None], -1).max(-1)                    # (n, K)
    later = rank[:, SLOT_GROUP][:, None] > owner[..., None]                      # (n, K, P)
    inside = _segment_distance(points[:, :K, None], points[:, None, SLOT_A], points[:, None, SLOT_B])
    return (later & (inside < fig["radius"][:, None])).any(-1)


# ---- drawing ------------------------------------------------------------------------------------------

def scene(spec: PoseSpec, n: int, c: int, sources: int, rng: np.random.Generator) -> dict:
    """Colours and distractors of n images: intensity ranges (n, 4, 2, c) of the top, bottom, background and
    distractor maps, skin (n, c), a background gradient and noise, and per distractor slot (n, M) whether it is
    there, in front, a pasted image (with `sources` images to paste from) or a stroke; a stroke's ends, radius and
    intensity range, an image's index, centre, side and angle."""
    m, side = spec.clutter, spec.canvas
    ranges = np.sort(rng.random((n, 4, 2, c)), axis=2)
    skin = rng.uniform(.2, .95, (n, c))
    ends = rng.random((n, m, 2, 2)) * side
    ends[:, :, 1] = ends[:, :, 0] + (ends[:, :, 1] / side - .5) * rng.uniform(0, .6, (n, m, 1)) * side
    return {"ranges": ranges, "skin": skin, "gradient": rng.uniform(-.2, .2, (n, 2)),
            "noise": rng.uniform(0, .04, n), "present": np.arange(m) < rng.integers(0, m + 1, (n, 1)),
            "front": rng.random((n, m)) < 1 / 3, "patch": (rng.random((n, m)) < .5) & (sources > 0), "ends": ends,
            "stroke": rng.uniform(.015, .07, (n, m)) * side, "clutter": np.sort(rng.random((n, m, 2, c)), axis=2),
            "image": rng.integers(0, max(sources, 1), (n, m)), "centre": rng.random((n, m, 2)) * side,
            "side": rng.uniform(.2, .6, (n, m)) * side, "angle": rng.uniform(-np.pi, np.pi, (n, m))}


def texture_maps(rng: np.random.Generator, n: int, side: int, ds) -> torch.Tensor:
    """n texture maps in [0, 1], (n, C, side, side): source images zoomed, turned and shifted, or procedural."""
    if ds is not None:
        src = ds.images[torch.from_numpy(rng.integers(0, len(ds), n))].float() / 255
        zoom, turn = rng.uniform(.35, 1, n), rng.uniform(-np.pi, np.pi, n)
        shift = rng.uniform(-1, 1, (n, 2)) * (1 - zoom[:, None])
        theta = np.stack([zoom * np.cos(turn), -zoom * np.sin(turn), shift[:, 0],
                          zoom * np.sin(turn), zoom * np.cos(turn), shift[:, 1]], 1).reshape(n, 2, 3)
        grid = F.affine_grid(torch.from_numpy(theta).float(), [n, 1, side, side], align_corners=False)
        return F.grid_sample(src, grid, padding_mode="reflection", align_corners=False)
    up = lambda g: F.interpolate(torch.from_numpy(rng.random((n, 1, g, g), dtype=np.float32)),   # noqa: E731
                                 size=(side, side), mode="bicubic", align_corners=False)
    w = torch.from_numpy(rng.random((n, 3, 1, 1), dtype=np.float32))
    freq, turn, phase = (torch.from_numpy(rng.uniform(*r, (n, 1, 1, 1)).astype(np.float32))
                         for r in ((1, 8), (0, np.pi), (0, 2 * np.pi)))
    x = (torch.arange(side) + .5) / side
    wave = .5 + .5 * torch.sin(2 * np.pi * freq * (x * torch.cos(turn) + x[:, None] * torch.sin(turn)) + phase)
    mix = w[:, :1] * up(5) + w[:, 1:2] * up(16) + w[:, 2:] * wave
    return (mix / w.sum(1, keepdim=True)).clamp(0, 1)


def _coverage(gx: torch.Tensor, gy: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Antialiased coverage (n, H*W) of the pixel centres gx, gy (H*W,) by capsules a-b (n, 2) of radii r (n,)."""
    ab = b - a
    dx, dy = gx - a[:, :1], gy - a[:, 1:]
    t = ((dx * ab[:, :1] + dy * ab[:, 1:]) / (ab * ab).sum(1, keepdim=True).clamp_min(1e-12)).clamp_(0, 1)
    d = torch.hypot(dx - t * ab[:, :1], dy - t * ab[:, 1:])
    r = r[:, None]
    return (r.clamp(min=.5) + .5 - d).clamp_(0, 1) * (2 * r).clamp(max=1)


def _tensor(v: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(v)).float()


def render(fig: dict, scene: dict, side: int, c: int, ds, dark: bool, rng: np.random.Generator,
           maps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """One chunk of images (n, c, H, W) uint8, the figures' masks (n, H, W) uint8, and which keypoints a
    distractor in front covers (n, K). `maps`: the texture maps (n * 4, c, H, W) of top, bottom, background and
    distractors in [0, 1] (a clip's frames share theirs); None: drawn here."""
    n, hw = len(fig["points"]), side * side
    ys, xs = torch.meshgrid(torch.arange(side) + .5, torch.arange(side) + .5, indexing="ij")
    gx, gy = xs.reshape(-1), ys.reshape(-1)
    ranges = _tensor(scene["ranges"])[..., None]                              # (n, 4, 2, c, 1)
    maps = (texture_maps(rng, n * 4, side, ds) if maps is None else maps).reshape(n, 4, -1, hw)
    maps = ranges[:, :, 0] + (ranges[:, :, 1] - ranges[:, :, 0]) * maps        # (n, 4, c, HW)
    skin = _tensor(scene["skin"])[..., None].expand(n, c, hw)
    feature = torch.where(skin > .45, skin - .35, skin + .35)
    materials = torch.stack([skin, maps[:, 0], maps[:, 1], feature], 1)       # SKIN, TOP, BOTTOM, FEATURE
    g = _tensor(scene["gradient"])
    canvas = (maps[:, 2] + (g[:, :1] * (gx / side - .5) + g[:, 1:] * (gy / side - .5))[:, None]).clamp(0, 1)

    def distractors(canvas: torch.Tensor, front: bool) -> tuple[torch.Tensor, torch.Tensor]:
        cover = torch.zeros(n, hw)
        for j in range(scene["front"].shape[1]):
            here = scene["present"][:, j] & (scene["front"][:, j] == front)
            if not here.any():
                continue
            alpha, colour = _distractor(scene, j, maps[:, 3], gx, gy, side, ds, dark)
            alpha = alpha * _tensor(here)[:, None]
            canvas = canvas + alpha[:, None] * (colour - canvas)
            cover = 1 - (1 - cover) * (1 - alpha)
        return canvas, cover

    canvas, _ = distractors(canvas, False)
    rows, order = np.arange(n)[:, None], fig["order"]
    a_pts, b_pts = _tensor(fig["points"][rows, SLOT_A[order]]), _tensor(fig["points"][rows, SLOT_B[order]])
    radius, material = _tensor(fig["radius"][rows, order]), torch.from_numpy(fig["material"][rows, order])
    mask = torch.zeros(n, hw)
    for j in range(order.shape[1]):
        a = _coverage(gx, gy, a_pts[:, j], b_pts[:, j], radius[:, j])
        canvas = canvas + a[:, None] * (materials[torch.arange(n), material[:, j]] - canvas)
        mask = torch.maximum(mask, a)
    canvas, front = distractors(canvas, True)
    canvas = canvas + _tensor(scene["noise"])[:, None, None] * torch.from_numpy(
        rng.standard_normal((n, c, hw), dtype=np.float32))
    xy = np.floor(fig["points"][:, :K]).astype(np.int64)
    inside = ((xy >= 0) & (xy < side)).all(-1)
    pixel = np.where(inside, xy[..., 1] * side + xy[..., 0], 0)
    hidden = inside & (front.gather(1, torch.from_numpy(pixel)).numpy() >= .5)
    to8 = lambda v: (v * 255).round_().clamp_(0, 255).to(torch.uint8)          # noqa: E731
    return to8(canvas).reshape(n, c, side, side), to8(mask).reshape(n, side, side), hidden


def _distractor(scene: dict, j: int, texture: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, side: int, ds,
                dark: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha (n, HW) and colour (n, c, HW) of distractor slot j of each image: a stroke or blob textured by
    `texture` (n, c, HW), or a pasted source image."""
    ends, stroke = _tensor(scene["ends"][:, j]), _tensor(scene["stroke"][:, j])
    lo, hi = _tensor(scene["clutter"][:, j, :, :, None]).unbind(1)           # (n, c, 1) each
    alpha, colour = _coverage(gx, gy, ends[:, 0], ends[:, 1], stroke), lo + (hi - lo) * texture
    if ds is None:
        return alpha, colour
    src = ds.images[torch.from_numpy(scene["image"][:, j])].float() / 255
    src = torch.cat([src, torch.ones_like(src[:, :1])], 1)                    # the last channel: the square
    turn, size, centre = scene["angle"][:, j], scene["side"][:, j], scene["centre"][:, j] * 2 / side - 1
    rot = np.stack([np.cos(turn), np.sin(turn), -np.sin(turn), np.cos(turn)], 1).reshape(-1, 2, 2)
    rot = rot * (side / size)[:, None, None]                                   # canvas -> image coordinates
    theta = np.concatenate([rot, -(rot @ centre[..., None])], 2)
    grid = F.affine_grid(_tensor(theta), [len(src), 1, side, side], align_corners=False)
    pasted = F.grid_sample(src, grid, padding_mode="zeros", align_corners=False).flatten(2)
    c = src.shape[1] - 1
    # On a dark-background source (digits, MNIST, Fashion-MNIST) the object's own shape is the alpha.
    shape = (pasted[:, :c].mean(1) * 3).clamp(0, 1) if dark else 1
    patch = torch.from_numpy(scene["patch"][:, j])
    alpha = torch.where(patch[:, None], shape * pasted[:, c], alpha)
    colour = torch.where(patch[:, None, None], lo + (hi - lo) * pasted[:, :c], colour)
    return alpha, colour
