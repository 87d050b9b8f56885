"""COCO-style JSON, `coco:PATH[:SPLIT]`: PATH is a JSON file (its `file_name`s relative to the JSON's folder), or a
folder holding `annotations.json` beside the image files, or `train/` and `test/` sub-folders each with its own
(a folder without them is the train split). The JSON holds `images` ({id, file_name, width, height}),
`annotations` ({image_id, category_id, bbox: [x, y, w, h] in pixels}) and `categories` ({id, name}); classes
are the categories in ascending id order. Boxes are converted to (x1, y1, x2, y2); each image is decoded (grey
when every image is grey) and stretched to one square side (`resize`, by default the median longer side of
the images, at most images.DEFAULT_MAX_SIZE) with its boxes scaled alike. Passed over, and said (the record
counts them and names the first): annotations with a non-finite or zero-area box, or one outside the image
(beyond a pixel of slack, which is clipped off), an unknown category or image id, or marked iscrowd;
images whose file is missing or cannot be decoded or whose decoded size differs from the JSON's; images left
with no annotation. Nothing left is refused.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from .. import DplError, data, textfiles
from . import images as image_files
from .boxes import Boxes
from .scenes import ANNOTATIONS_FILE, COCO, BoxData, finish

CLIP_SLACK = 1.0         # COCO boxes may overshoot the image by this many pixels (rounding); clipped off


def coco_file(root: Path, split: str) -> Path:
    """The annotation file of `coco:PATH` for a split (the module docstring's layout)."""
    if root.is_file():
        if split != "train":
            raise DplError(f"{root}: one JSON file is the train split; give a folder with {split}/{ANNOTATIONS_FILE}")
        return root
    if not root.exists():
        raise DplError(f"{root}: no such file or folder")
    path = image_files.split_folder(root, split) / ANNOTATIONS_FILE
    if not path.is_file():
        raise DplError(f"{path.parent}: no {ANNOTATIONS_FILE} (COCO-style JSON: images, annotations, categories)")
    return path


def read_document(path: Path) -> dict:
    doc = textfiles.read_json(path, "COCO JSON file", allow_nan=True)     # a NaN box is skipped and said
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "categories")):
        raise DplError(f"{path}: COCO-style JSON needs lists 'images' and 'categories' (and 'annotations')")
    if not isinstance(doc.get("annotations", []), list):
        raise DplError(f"{path}: 'annotations' must be a list")
    return doc


def field(path: Path, what: str, entry, key: str, kind):
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DplError(f"{path}: {what} {json.dumps(entry)[:120]} has no valid {key!r}")
    return value


class Skips:
    """What reading a COCO file passed over: counted by reason, the first of each named."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.first.setdefault(reason, example)

    def notes(self) -> tuple[str, ...]:
        return tuple(f"skipped {n} {reason} (first: {self.first[reason]})" for reason, n in self.counts.items())

    def record(self) -> dict:
        return {reason: {"count": n, "first": self.first[reason]} for reason, n in self.counts.items()}


def decode_image(path: Path, size: tuple[int, int], channels: int, side: int | None = None) -> np.ndarray:
    """An image file -> uint8 (channels, side, side), stretched (None: its own height and width); raises on a bad
    file or a size not `size` (w, h)."""
    from PIL import Image

    with Image.open(io.BytesIO(path.read_bytes())) as im:
        im.load()
        if im.size != size:
            raise ValueError(f"its size {im.size[0]}x{im.size[1]} is not the JSON's {size[0]}x{size[1]}")
        im = image_files.convert_mode(im, channels)
        if side is not None:
            im = im.resize((side, side), Image.BILINEAR)
        pixels = np.array(im, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _is_grey(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        return im.mode in image_files.GREY_MODES


def read_coco(root: Path, split: str, resize: int | None = None) -> BoxData:
    """The images and boxes of `coco:PATH`, as the module docstring says."""
    path = coco_file(root, split)
    folder = path.parent
    doc = read_document(path)
    categories = _categories(path, doc)
    class_of = {cid: k for k, (cid, _) in enumerate(categories)}
    skips = Skips()
    entries = image_entries(path, doc)
    for a in doc.get("annotations", []):
        _annotate(path, a, entries, class_of, skips)
    kept = with_files(entries, folder, skips)
    if not kept:
        raise DplError(f"{path}: no image with a valid annotation and a file is left"
                       + (f" ({'; '.join(skips.notes())})" if skips.counts else ""))
    side = resize or min(int(np.median([max(e["w"], e["h"]) for e in kept])), image_files.DEFAULT_MAX_SIZE)
    channels = 1 if all(safe_grey(folder / e["file"]) for e in kept[:image_files.PROBE]) else 3
    pixels, good = _decoded(kept, folder, side, channels, skips)
    if not good:
        raise DplError(f"{path}: none of its image files can be decoded ({'; '.join(skips.notes())})")
    record = {"spec": f"{COCO}:{root}:{split}", "split": split, "coco": str(path), "resize": side,
              "files": [e["file"] for e in good][:data.MAX_LISTED], "skipped": skips.record()}
    return finish(torch.from_numpy(np.stack(pixels)), _truth(good, side), [n for _, n in categories], record, None,
                  skips.notes())


def _categories(path: Path, doc: dict) -> list[tuple[int, str]]:
    """(id, name) of every category, in ascending id order; refused when an id repeats or there are none."""
    categories = sorted(((field(path, "category", c, "id", int), str(field(path, "category", c, "name", str)))
                         for c in doc["categories"]))
    ids = [i for i, _ in categories]
    if len(set(ids)) != len(ids):
        raise DplError(f"{path}: category id {next(i for i in ids if ids.count(i) > 1)} appears twice")
    if not categories:
        raise DplError(f"{path}: no categories")
    return categories


def image_entries(path: Path, doc: dict) -> dict[int, dict]:
    """The images by id: file, width, height, and the boxes and labels their annotations add; an id that repeats is
    refused."""
    entries: dict[int, dict] = {}
    for im in doc["images"]:
        iid = field(path, "image", im, "id", int)
        if iid in entries:
            raise DplError(f"{path}: image id {iid} appears twice")
        entries[iid] = {"file": str(field(path, "image", im, "file_name", str)),
                        "w": field(path, "image", im, "width", int), "h": field(path, "image", im, "height", int),
                        "boxes": [], "labels": []}
    return entries


ZERO_AREA = "boxes that are NaN, infinite or of zero area"


def _annotate(path: Path, a, entries: dict[int, dict], class_of: dict[int, int], skips: Skips) -> None:
    """Annotation `a`'s box (clipped to its image) and class, added to its image's entry; or why it is passed over,
    added to `skips`."""
    aid = a.get("id", "?") if isinstance(a, dict) else "?"
    iid, cid = field(path, "annotation", a, "image_id", int), field(path, "annotation", a, "category_id", int)
    bbox = a.get("bbox")
    where = f"annotation {aid} of image {iid}"
    if iid not in entries:
        skips.add("annotations of unknown image ids", where)
    elif cid not in class_of:
        skips.add("annotations of unknown category ids", f"{where}, category {cid}")
    elif a.get("iscrowd"):
        skips.add("crowd annotations (iscrowd)", where)
    else:
        e = entries[iid]
        box, skipped = clipped_box(bbox, e["w"], e["h"], where)
        if box is None:
            skips.add(*skipped)
        else:
            e["boxes"].append(box)
            e["labels"].append(class_of[cid])


def clipped_box(bbox, width: int, height: int, where: str) -> tuple[list[float] | None, tuple[str, str] | None]:
    """(an annotation's [x, y, w, h] as [x1, y1, x2, y2] clipped to its image of width x height pixels, None); or
    (None, (why it is passed over, the example to name))."""
    if not (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
        return None, ("annotations without a box [x, y, w, h]", where)
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None, (ZERO_AREA, f"{where} {bbox}")
    if x < -CLIP_SLACK or y < -CLIP_SLACK or x + w > width + CLIP_SLACK or y + h > height + CLIP_SLACK:
        return None, ("boxes outside their image", f"{where} {bbox} in {width}x{height}")
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    if x2 <= x1 or y2 <= y1:
        return None, (ZERO_AREA, f"{where} {bbox}")
    return [x1, y1, x2, y2], None


def with_files(entries: dict[int, dict], folder: Path, skips: Skips, key: str = "boxes") -> list[dict]:
    """The images left with an annotation (a non-empty list `key` in their entry) and a file, in the JSON's order;
    the others added to `skips`."""
    kept = []
    for e in entries.values():
        if not e[key]:
            skips.add("images with no annotation", e["file"])
        elif not (folder / e["file"]).is_file():
            skips.add("images whose file is missing", e["file"])
        else:
            kept.append(e)
    return kept


def _decoded(kept: list[dict], folder: Path, side: int, channels: int, skips: Skips
             ) -> tuple[list[np.ndarray], list[dict]]:
    """(the pixels of the images that decode, stretched to side x side; their entries); the others added to `skips`."""
    pixels, good = [], []
    for e in kept:
        try:
            pixels.append(decode_image(folder / e["file"], (e["w"], e["h"]), channels, side))
            good.append(e)
        except Exception as err:       # noqa: BLE001  any failure to decode one file skips it
            skips.add("images that cannot be decoded", f"{e['file']} ({str(err).splitlines()[0][:80]})")
    return pixels, good


def _truth(good: list[dict], side: int) -> Boxes:
    """The images' boxes, scaled as their images were stretched to side x side."""
    counts = torch.tensor([len(e["boxes"]) for e in good])
    scale = lambda e: torch.tensor([side / e["w"], side / e["h"]] * 2)       # noqa: E731
    return Boxes(torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)]),
                 torch.cat([torch.tensor(e["boxes"], dtype=torch.float32) * scale(e) for e in good]).float(),
                 torch.tensor([k for e in good for k in e["labels"]], dtype=torch.int64))


def safe_grey(path: Path) -> bool:
    try:
        return _is_grey(path)
    except Exception:                  # noqa: BLE001  an unreadable file is skipped when decoded
        return True
