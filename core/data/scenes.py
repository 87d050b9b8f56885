"""Data with boxes (`BoxData`, `load_boxes`: synthetic scenes built from a classification source here, COCO-style
JSON over image files in coco.py) and the scenes themselves.

Scenes, `scenes:SOURCE[:SPLIT]` (SOURCE any in-memory classification source: digits, fashion-mnist, cifar10,
...). Each scene is a black square canvas of `canvas` pixels holding K objects, K drawn uniformly in the
inclusive range `objects`. An object is an image of the source's split drawn uniformly, resized (bilinear,
antialiased) to a square side drawn uniformly from the inclusive pixel range `scale`, and placed at a uniform
position inside the canvas such that its square's IoU with every square already placed is at most
`max_overlap`; an object that finds no such place in PLACE_TRIES draws is left out (the scene holds fewer, at
least one: the first always fits), and the record counts them. Objects are pasted with the pixel-wise maximum,
so on a black-background source (digits, MNIST, Fashion-MNIST) overlapping objects both stay visible. The
ground-truth box of an object is the tight extent of its non-zero pixels within its square (the whole square
for an object without any), so every canvas pixel outside all boxes is zero; its class is the source label.
Training scenes (`scenes` of them) come from the source's train split, test scenes (`test_scenes`) from its
test split, each split from its own random stream of (seed, source, split): the same spec gives the same scenes.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import DplError, data
from . import images as image_files
from . import memory
from .partition import held_out_images
from .boxes import Boxes

SCENES, COCO = "scenes", "coco"
ANNOTATIONS_FILE = "annotations.json"
PLACE_TRIES = 100        # positions drawn for an object before it is left out of its scene


@dataclass(frozen=True, kw_only=True)
class SceneSpec:
    """How scenes are built from a classification source (the module docstring says how)."""

    source: str                             # a classification source spec, e.g. "digits", "fashion-mnist"
    canvas: int = 64                        # square canvas side, pixels
    objects: tuple[int, int] = (1, 3)       # K drawn uniformly in this inclusive range
    scale: tuple[int, int] = (16, 28)       # object side, pixels, drawn uniformly in this inclusive range
    max_overlap: float = 0.1                # largest IoU between the squares of two objects of a scene
    scenes: int = 1000                      # train scenes (from the source's train split)
    test_scenes: int = 300                  # test scenes (from its test split)
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(int(k) for k in self.objects))
        object.__setattr__(self, "scale", tuple(int(s) for s in self.scale))
        (k_lo, k_hi), (s_lo, s_hi) = self.objects, self.scale
        if not 1 <= self.canvas <= image_files.MAX_SIZE:
            raise DplError(f"--canvas must be between 1 and {image_files.MAX_SIZE}, got {self.canvas}")
        if not 1 <= k_lo <= k_hi:
            raise DplError(f"--objects must be a range LO,HI with 1 <= LO <= HI, got {k_lo},{k_hi}")
        if not 1 <= s_lo <= s_hi:
            raise DplError(f"--object-size must be a range LO,HI of pixels with 1 <= LO <= HI, got {s_lo},{s_hi}")
        if s_hi > self.canvas:
            raise DplError(f"objects of up to {s_hi} px cannot fit a canvas of {self.canvas} px: give --object-size "
                           f"at most {self.canvas} or a larger --canvas")
        if not 0 <= self.max_overlap <= 1:
            raise DplError(f"--max-overlap is an IoU in [0, 1], got {self.max_overlap}")
        # A rough lower bound on the area K squares need when each may share a share m of itself: refuse what
        # cannot fit even packed perfectly (the smallest objects, the largest overlap allowed).
        if self.max_overlap < 1 and k_hi * s_lo * s_lo * (1 - self.max_overlap) > self.canvas ** 2:
            raise DplError(f"{k_hi} objects of at least {s_lo} px with IoU at most {self.max_overlap:g} cannot fit a "
                           f"canvas of {self.canvas} px: fewer --objects, smaller --object-size or a larger --canvas")
        for flag, n in (("--scenes", self.scenes), ("--test-scenes", self.test_scenes)):
            if n < 1:
                raise DplError(f"{flag} must be at least 1, got {n}")

    def count(self, split: str) -> int:
        return self.scenes if split == "train" else self.test_scenes


@dataclass
class BoxData:
    images: torch.Tensor    # uint8 (N, C, H, W), one size for all
    truth: Boxes            # ground-truth boxes in pixels of `images`, class indices into `classes`
    classes: list[str]
    record: dict            # the data record for meta["data"]: spec, split, n, fingerprint, scenes or coco, skipped
    notes: tuple[str, ...] = field(default=())     # what was passed over, one line each, for the CLI to say

    def __len__(self) -> int:
        return len(self.images)

    @property
    def spec(self) -> str:
        return self.record["spec"]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def subset(self, index: torch.Tensor) -> BoxData:
        index = torch.as_tensor(index, dtype=torch.int64)
        truth = self.truth.subset(index)
        record = {**self.record, "n": len(index), "fingerprint": fingerprint(self.record, self.images[index], truth)}
        return BoxData(self.images[index], truth, self.classes, record, self.notes)

    def held_out(self, n: int | None, seed: int) -> tuple[BoxData, BoxData | None]:
        """(the rest, `n` images drawn by a permutation seeded `seed`) for --val; (self, None) when n is None."""
        return held_out_images(self, n, seed)

    def image_labels(self) -> torch.Tensor:
        """float32 (N, C) multi-hot of the classes present: the training target of WSDDN."""
        return self.truth.image_labels(len(self.classes))


def is_box_spec(spec: str) -> bool:
    """Whether a data spec names data with boxes: `scenes:SOURCE[:SPLIT]` or `coco:PATH[:SPLIT]`."""
    return spec.partition(":")[0] in (SCENES, COCO)


def parse_box_spec(spec: str) -> tuple[str, str, str | None]:
    """`scenes:SOURCE[:SPLIT]` -> ("scenes", source, split or None); `coco:PATH[:SPLIT]` -> ("coco", absolute
    path, split or None)."""
    kind, _, rest = spec.partition(":")
    if kind == SCENES:
        source, split = data.parse_spec(rest) if rest else (None, None)
        if not source:
            raise DplError(f"{SCENES} needs a classification source: {SCENES}:SOURCE[:SPLIT], e.g. {SCENES}:digits")
        if len(data.union_members(source)) > 1 or data.is_image_files(source):
            raise DplError(f"{spec}: scenes are built from a single source held in memory (digits, fashion-mnist, ...)")
        return kind, source, split
    if kind == COCO:
        path, _, split = rest.rpartition(":")
        if not path or split not in data.SPLITS:
            path, split = rest, None
        if not path:
            raise DplError(f"{COCO} needs a path: {COCO}:PATH[:SPLIT] (a JSON file or a folder with {ANNOTATIONS_FILE})")
        return kind, str(Path(path).expanduser().absolute()), split
    raise DplError(f"{spec}: not data with boxes (scenes:SOURCE[:SPLIT] or coco:PATH[:SPLIT])")


def load_boxes(spec: str, split: str, scene: SceneSpec | None = None, *, resize: int | None = None,
               download: bool = False) -> BoxData:
    """The data with boxes a spec names; `split` is the default where the spec has none. Scenes are built by
    `scene` (its source is the spec's; None: SceneSpec's defaults), `resize` (scenes: the canvas side by
    default) stretches the images to that square side with their boxes."""
    kind, where, given = parse_box_spec(spec)
    split = given or split
    if resize is not None and not 1 <= resize <= image_files.MAX_SIZE:
        raise DplError(f"--resize must be between 1 and {image_files.MAX_SIZE}, got {resize}")
    if kind == COCO:
        from .coco import read_coco      # coco builds on this module's BoxData

        return read_coco(Path(where), split, resize)
    if scene is not None and scene.source != where:
        scene = replace(scene, source=where)
    return build_scenes(scene or SceneSpec(source=where), split, resize, download)


def scene_spec_of(record: dict) -> SceneSpec | None:
    """The SceneSpec a data record (meta["data"]) was built by; None for data that is not scenes."""
    made = record.get("scenes") if isinstance(record, dict) else None
    if made is None:
        return None
    try:
        return SceneSpec(**made)
    except (TypeError, ValueError) as e:
        raise DplError(f"corrupt metadata value for 'data.scenes' ({e})") from None


def fingerprint(record: dict, images: torch.Tensor, truth: Boxes) -> str:
    h = hashlib.sha256(json.dumps({k: record.get(k) for k in ("spec", "scenes", "resize")}, sort_keys=True).encode())
    for t in (images, truth.offsets, truth.boxes, truth.labels):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def finish(images: torch.Tensor, truth: Boxes, classes: list[str], record: dict, resize: int | None,
            notes: tuple[str, ...] = ()) -> BoxData:
    if resize is not None and resize != images.shape[-1]:
        images, truth = _stretched(images, truth, resize)
        record = {**record, "resize": resize}
    record = {**record, "n": len(images), "boxes": len(truth.boxes), "image_size": list(images.shape[-2:])}
    record["fingerprint"] = fingerprint(record, images, truth)
    return BoxData(images, truth, classes, record, notes)


def _stretched(images: torch.Tensor, truth: Boxes, size: int) -> tuple[torch.Tensor, Boxes]:
    h, w = images.shape[-2:]
    out = _resize(images, size, size)
    scale = torch.tensor([size / w, size / h, size / w, size / h])
    return out, replace(truth, boxes=truth.boxes * scale)


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """uint8 images -> uint8 images of h x w (bilinear, antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == (h, w):
        return x
    y = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


# ---- scenes -------------------------------------------------------------------------------------------

def scene_stream(spec: SceneSpec, split: str) -> np.random.Generator:
    return np.random.default_rng([spec.seed % 2**32, zlib.crc32(spec.source.encode()), zlib.crc32(split.encode())])


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box with each row of `others`."""
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = w * h
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])      # noqa: E731
    return inter / (area(box) + area(others) - inter)


def layout(spec: SceneSpec, count: int, n_source: int, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray, int]:
    """Where the objects of `count` scenes go: (rows (M, 5) of scene, source image, side, x, y; offsets (count+1,)
    into them; objects left out for want of a place)."""
    rows, offsets, dropped = [], [0], 0
    k_lo, k_hi = spec.objects
    s_lo, s_hi = spec.scale
    for _ in range(count):
        k = int(rng.integers(k_lo, k_hi + 1))
        sides = rng.integers(s_lo, s_hi + 1, k)
        sources = rng.integers(0, n_source, k)
        placed = np.zeros((0, 4))
        for side, src in zip(sides, sources):
            xy = rng.integers(0, spec.canvas - side + 1, (PLACE_TRIES, 2))
            for x, y in xy:
                box = np.array([x, y, x + side, y + side], dtype=np.float64)
                if not len(placed) or _iou(box, placed).max() <= spec.max_overlap:
                    placed = np.vstack([placed, box])
                    rows.append((len(offsets) - 1, src, side, x, y))
                    break
            else:
                dropped += 1
        offsets.append(len(rows))
    return np.array(rows, dtype=np.int64).reshape(-1, 5), np.array(offsets, dtype=np.int64), dropped


def build_scenes(spec: SceneSpec, split: str, resize: int | None = None, download: bool = False) -> BoxData:
    """`spec.count(split)` scenes from the source's `split` (train or test), as the module docstring says."""
    if split not in ("train", "test"):
        raise DplError(f"scenes are built from a source's train or test split, not {split!r}")
    ds = data.load(f"{spec.source}:{split}", download=download, stream=False)
    if (ds.labels < 0).any():
        raise DplError(f"{ds.spec}: scenes are built from a labeled source; this one has unlabeled samples")
    count, c = spec.count(split), ds.shape[0]
    memory.check_fits(count * (c * spec.canvas ** 2 + spec.objects[1] * 100),       # canvases, then boxes and layout
                      f"{'--scenes' if split == 'train' else '--test-scenes'} {count:,}: {count:,} scenes of "
                      f"{c}x{spec.canvas}x{spec.canvas}")
    rows, offsets, dropped = layout(spec, count, len(ds), scene_stream(spec, split))
    canvas = torch.zeros(len(offsets) - 1, c, spec.canvas, spec.canvas, dtype=torch.uint8)
    boxes = torch.zeros(len(rows), 4)
    for side in np.unique(rows[:, 2]):
        at = np.flatnonzero(rows[:, 2] == side)
        pasted = _resize(ds.images[torch.from_numpy(rows[at, 1])], int(side), int(side))
        lit = pasted.amax(1) > 0                                             # (n, side, side)
        cols, lines = lit.any(1), lit.any(2)                                 # lit columns (x), lit lines (y)
        for j, r in enumerate(at):
            scene, _, s, x, y = (int(v) for v in rows[r])
            region = canvas[scene, :, y:y + s, x:x + s]
            torch.maximum(region, pasted[j], out=region)
            xs, ys = torch.nonzero(cols[j]).squeeze(1), torch.nonzero(lines[j]).squeeze(1)
            if len(xs):
                boxes[r] = torch.tensor([x + int(xs[0]), y + int(ys[0]), x + int(xs[-1]) + 1, y + int(ys[-1]) + 1])
            else:
                boxes[r] = torch.tensor([x, y, x + s, y + s])
    truth = Boxes(torch.from_numpy(offsets), boxes, ds.labels[torch.from_numpy(rows[:, 1])].clone())
    record = {"spec": f"{SCENES}:{spec.source}:{split}", "split": split, "scenes": asdict(spec),
              "source": ds.describe(), "dropped_objects": dropped}
    notes = (f"{dropped} objects found no place within --max-overlap {spec.max_overlap:g} and were left out",) \
        if dropped else ()
    return finish(canvas, truth, list(ds.classes), record, resize, notes)
