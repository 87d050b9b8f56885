"""COCO person keypoints, `coco-keypoints:PATH[:SPLIT]`, read top-down as SimpleBaseline reads them: one sample per
person, the image cropped around the person's box. PATH is laid out as for `coco:` (coco.py: a JSON file, or a
folder with `annotations.json`, or `train/` and `test/` sub-folders each with its own).

The keypoint set is the first category (in ascending id order) that lists `keypoints`: its names, its `skeleton`
(COCO's 1-based pairs, made 0-based), flip pairs from the names `left_X`/`right_X`, one part "body" holding every
keypoint, and OKS sigmas by name: COCO's 17 person sigmas where a name is one of COCO's, else DEFAULT_SIGMA.
Annotations of every category listing the same keypoints are read; other categories' are passed over.

Each person's box [x, y, w, h] (clipped to its image, as coco.py clips boxes) is made a square of side margin x
max(w, h) about its centre, widened outward to whole pixels so the crop is an exact window of the image (zero where
it leaves the image), then resized to size x size (bilinear, antialiased when shrinking). Coordinates follow
poses.py: pixel i covers [i, i + 1). COCO's keypoint coordinates are read as already in that convention (no half-
pixel shift), as its boxes are. With the crop's origin (x0, y0) and scale = size / side, crop = (image - (x0, y0))
* scale and image = crop / scale + (x0, y0) (`to_image_coords`); `PoseData.crops` keeps (x0, y0, scale, image id)
per sample. A keypoint is visibility 0 where COCO's v is 0 or where it falls outside the crop (its coordinates
kept). `boxes` are the person boxes in crop pixels, clipped to the crop. OKS in crop pixels equals OKS in image
pixels when the area is scaled by scale^2 (distances and sqrt(area) scale alike), which the box area in crop
pixels is: so measure.oks_ap on this data gives the image's OKS for boxes that the crop holds (margin >= 1).

Passed over, and said as coco.py says it (counted in the record, the first of each named): annotations of an
unknown image id or of another category, crowds (iscrowd), keypoints that are not 3 x K numbers, or hold NaN or
infinity, or a visibility not 0, 1 or 2, or no labeled keypoint (num_keypoints 0; the count is taken from the
visibilities, not from `num_keypoints`), or a labeled keypoint outside the image beyond a pixel of slack; boxes
missing, non-finite, of zero area or outside the image (no fallback to the keypoints' box: COCO gives every person
a box, and one that is wrong says the annotation is); images whose file is missing or cannot be decoded or whose
size differs from the JSON's; images left with no person. Nothing left is refused.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import DplError, data
from . import images as image_files
from . import memory
from .coco import CLIP_SLACK, Skips, clipped_box, coco_file, decode_image, field, image_entries, read_document
from .coco import safe_grey, with_files
from .poses import PoseData, fingerprint

COCO_KEYPOINTS = "coco-keypoints"
COCO_SIGMAS = {"nose": .026, "left_eye": .025, "right_eye": .025, "left_ear": .035, "right_ear": .035,
               "left_shoulder": .079, "right_shoulder": .079, "left_elbow": .072, "right_elbow": .072,
               "left_wrist": .062, "right_wrist": .062, "left_hip": .107, "right_hip": .107, "left_knee": .087,
               "right_knee": .087, "left_ankle": .089, "right_ankle": .089}
DEFAULT_SIGMA = .05      # OKS sigma of a keypoint COCO does not name (between its eyes' .025 and hips' .107)
CROP_COLUMNS = ("x0", "y0", "scale", "image_id")


def is_coco_keypoints_spec(spec: str) -> bool:
    """Whether a data spec names COCO keypoints: `coco-keypoints:PATH[:SPLIT]`."""
    return spec.partition(":")[0] == COCO_KEYPOINTS


def parse_coco_keypoints_spec(spec: str) -> tuple[Path, str | None]:
    """`coco-keypoints:PATH[:SPLIT]` -> (absolute path, split or None)."""
    kind, _, rest = spec.partition(":")
    if kind != COCO_KEYPOINTS:
        raise DplError(f"{spec}: not a {COCO_KEYPOINTS} spec; {COCO_KEYPOINTS}:PATH[:SPLIT]")
    path, _, split = rest.rpartition(":")
    if not path or split not in data.SPLITS:
        path, split = rest, None
    if not path:
        raise DplError(f"{COCO_KEYPOINTS} needs a path: {COCO_KEYPOINTS}:PATH[:SPLIT] (a JSON file or a folder "
                       f"with annotations.json)")
    return Path(path).expanduser().absolute(), split


def to_image_coords(coords: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """Crop pixel coordinates (N, K, 2) back to their images' pixels: coords / scale + (x0, y0), by `crops`
    (N, >= 3) = x0, y0, scale (PoseData.crops)."""
    crops = crops.to(coords.device, torch.float64)
    return (coords.double() / crops[:, None, 2:3] + crops[:, None, :2]).to(coords.dtype)


def read_coco_keypoints(root: Path, split: str, size: int = 64, margin: float = 1.25) -> PoseData:
    """The people of `coco-keypoints:PATH`, one size x size crop each, as the module docstring says."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= image_files.MAX_SIZE:
        raise DplError(f"the crop size must be an integer between 1 and {image_files.MAX_SIZE}, got {size!r}")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and 0 < margin <= 10):
        raise DplError(f"the crop margin is a factor of the box's longer side in (0, 10], got {margin!r}")
    path = coco_file(Path(root), split)
    doc = read_document(path)
    names, skeleton, cids = _keypoint_set(path, doc)
    skips = Skips()
    entries = image_entries(path, doc)
    for iid, e in entries.items():
        e["people"], e["id"] = [], iid
    for a in doc.get("annotations", []):
        _annotate(path, a, entries, cids, len(names), skips)
    kept = with_files(entries, path.parent, skips, "people")
    if not kept:
        raise DplError(f"{path}: no person with labeled keypoints and an image file is left"
                       + (f" ({'; '.join(skips.notes())})" if skips.counts else ""))
    channels = 1 if all(safe_grey(path.parent / e["file"]) for e in kept[:image_files.PROBE]) else 3
    n = sum(len(e["people"]) for e in kept)
    memory.check_fits(n * (channels * size * size + 32 * len(names) + 64),
                      f"{path}: {n:,} people cropped to {channels}x{size}x{size}")
    images = torch.zeros(n, channels, size, size, dtype=torch.uint8)
    keypoints, boxes, crops, row = [], [], [], 0
    for e in kept:
        try:
            pixels = torch.from_numpy(decode_image(path.parent / e["file"], (e["w"], e["h"]), channels))
        except Exception as err:       # noqa: BLE001  any failure to decode one file skips it, as coco.py
            why = (str(err) or type(err).__name__).splitlines()[0][:80]
            skips.add("images that cannot be decoded", f"{e['file']} ({why})")
            continue
        for box, kp in e["people"]:
            images[row], crop = _crop(pixels, box, size, margin)
            keypoints.append(_in_crop(kp, crop, size))
            boxes.append(((torch.tensor(box, dtype=torch.float64).view(2, 2) - crop[:2]) * crop[2]).clamp(0, size))
            crops.append(torch.cat([crop, torch.tensor([e["id"]], dtype=torch.float64)]))
            row += 1
    if not row:
        raise DplError(f"{path}: none of its image files can be decoded ({'; '.join(skips.notes())})")
    images = images[:row].clone() if row < n else images
    keypoints, boxes = torch.stack(keypoints), torch.stack(boxes).view(-1, 4).float()
    record = {"spec": f"{COCO_KEYPOINTS}:{root}:{split}", "split": split, "coco": str(path), "n": row,
              "keypoints": len(names), "image_size": [size, size],
              "coco_keypoints": {"margin": float(margin), "size": size, "skipped": skips.record()}}
    record["fingerprint"] = fingerprint(record, images, keypoints, boxes)
    return PoseData(images, keypoints, boxes, names, skeleton, _flip_pairs(names), {"body": list(range(len(names)))},
                    [COCO_SIGMAS.get(name, DEFAULT_SIGMA) for name in names], record, skips.notes(),
                    crops=torch.stack(crops))


def _keypoint_set(path: Path, doc: dict) -> tuple[list[str], list[tuple[int, int]], set[int]]:
    """(keypoint names, 0-based skeleton, the ids of the categories listing those names) of the first category, in
    ascending id order, that lists `keypoints`; refused when none does or its lists are malformed."""
    listing = sorted(((field(path, "category", c, "id", int), c) for c in doc["categories"]
                      if isinstance(c, dict) and "keypoints" in c), key=lambda ic: ic[0])
    if not listing:
        raise DplError(f"{path}: no category lists 'keypoints' (COCO person keypoints name them in their category)")
    cid, first = listing[0]
    names = first["keypoints"]
    if (not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)):
        raise DplError(f"{path}: category {cid}'s 'keypoints' must be a list of distinct names")
    limbs = first.get("skeleton", [])
    k = len(names)
    if not isinstance(limbs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(type(i) is int and 1 <= i <= k for i in p) for p in limbs):
        raise DplError(f"{path}: category {cid}'s 'skeleton' must be a list of 1-based keypoint pairs [i, j] in 1..{k}")
    return list(names), [(i - 1, j - 1) for i, j in limbs], {i for i, c in listing if c["keypoints"] == names}


def _flip_pairs(names: list[str]) -> list[tuple[int, int]]:
    return [(i, names.index("right_" + n[5:])) for i, n in enumerate(names)
            if n.startswith("left_") and "right_" + n[5:] in names]


def _annotate(path: Path, a, entries: dict[int, dict], cids: set[int], k: int, skips: Skips) -> None:
    """Annotation `a`'s clipped box and keypoints (K, 3) added to its image's people; or why it is passed over, added
    to `skips`."""
    aid = a.get("id", "?") if isinstance(a, dict) else "?"
    iid, cid = field(path, "annotation", a, "image_id", int), field(path, "annotation", a, "category_id", int)
    where = f"annotation {aid} of image {iid}"
    if iid not in entries:
        return skips.add("annotations of unknown image ids", where)
    if cid not in cids:
        return skips.add("annotations of categories without these keypoints", f"{where}, category {cid}")
    if a.get("iscrowd"):
        return skips.add("crowd annotations (iscrowd)", where)
    kp = a.get("keypoints")
    if not (isinstance(kp, list) and len(kp) == 3 * k
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in kp)):
        return skips.add(f"annotations whose keypoints are not {3 * k} numbers", where)
    kp = np.asarray(kp, dtype=np.float64).reshape(k, 3)
    if not np.isfinite(kp).all():
        return skips.add("annotations with NaN or infinite keypoints", where)
    if not np.isin(kp[:, 2], (0, 1, 2)).all():
        return skips.add("annotations with a visibility not 0, 1 or 2", f"{where} {sorted(set(kp[:, 2]))}")
    labeled = kp[:, 2] > 0
    if not labeled.any():
        return skips.add("annotations with no labeled keypoint (num_keypoints 0)", where)
    e = entries[iid]
    xy = kp[labeled, :2]
    if (xy < -CLIP_SLACK).any() or (xy[:, 0] > e["w"] + CLIP_SLACK).any() or (xy[:, 1] > e["h"] + CLIP_SLACK).any():
        return skips.add("annotations with a labeled keypoint outside their image", f"{where} in {e['w']}x{e['h']}")
    box, skipped = clipped_box(a.get("bbox"), e["w"], e["h"], where)
    if box is None:
        return skips.add(*skipped)
    e["people"].append((box, kp))


def _crop(pixels: torch.Tensor, box: list[float], size: int, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the size x size crop of uint8 `pixels` (C, H, W) around `box` (x1, y1, x2, y2), its float64 (x0, y0,
    scale)): the square of side margin x the box's longer side about its centre, widened to whole pixels."""
    x1, y1, x2, y2 = box
    half = margin * max(x2 - x1, y2 - y1) / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x0, y0 = math.floor(cx - half), math.floor(cy - half)
    side = max(math.ceil(cx + half) - x0, math.ceil(cy + half) - y0, 1)
    c, h, w = pixels.shape
    window = torch.zeros(c, side, side)
    top, left, bottom, right = max(y0, 0), max(x0, 0), min(y0 + side, h), min(x0 + side, w)
    if bottom > top and right > left:
        window[:, top - y0:bottom - y0, left - x0:right - x0] = pixels[:, top:bottom, left:right]
    # align_corners=False: output pixel j's centre j + 0.5 samples input (j + 0.5) / scale, the convention's mapping
    out = F.interpolate(window[None], size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
    return out[0].round().clamp(0, 255).to(torch.uint8), torch.tensor([x0, y0, size / side], dtype=torch.float64)


def _in_crop(kp: np.ndarray, crop: torch.Tensor, size: int) -> torch.Tensor:
    """COCO keypoints (K, 3) in image pixels -> float32 (K, 3) in crop pixels, visibility 0 outside the crop."""
    kp = torch.from_numpy(kp)
    xy = (kp[:, :2] - crop[:2]) * crop[2]
    inside = ((xy >= 0) & (xy < size)).all(1)
    return torch.cat([xy, torch.where(inside, kp[:, 2], 0.0)[:, None]], 1).float()
