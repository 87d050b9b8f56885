"""Boxes: ragged per-image boxes, their checks, the measures of detection (COCO mAP through pycocotools,
precision and recall at an IoU, CorLoc), and box label folders (pseudo-boxes written by `dpl label`).

Coordinates are pixels of the stored image, (x1, y1, x2, y2) with x to the right and y down, as torchvision's
detection models take and return them; a box covers x1 <= x < x2, so its width is x2 - x1.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from .. import DplError, artifacts

KIND = "boxes"
BOX_KEYS = ("teachers", "data", "classes", "num_classes", "image_size", "total", "world")
BOX_TENSORS = {"index": (torch.int64, 1), "box_offsets": (torch.int64, 1), "boxes": (torch.float32, 2),
               "box_label": (torch.int64, 1), "box_score": (torch.float32, 1)}


@dataclass
class Boxes:
    """Boxes of N images, ragged: image i's boxes are rows offsets[i]:offsets[i+1]."""

    offsets: torch.Tensor                  # int64 (N + 1,)
    boxes: torch.Tensor                    # float32 (M, 4)
    labels: torch.Tensor                   # int64 (M,)
    scores: torch.Tensor | None = None     # float32 (M,): predictions; None for ground truth

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def of(self, i: int) -> dict:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        out = {"boxes": self.boxes[a:b], "labels": self.labels[a:b]}
        if self.scores is not None:
            out["scores"] = self.scores[a:b]
        return out

    def subset(self, index: torch.Tensor) -> "Boxes":
        return Boxes.from_dicts([self.of(int(i)) for i in index], scores=self.scores is not None)

    def targets(self, device=None) -> list[dict]:
        return [{k: v.to(device) for k, v in self.of(i).items()} for i in range(len(self))]

    def image_labels(self, num_classes: int) -> torch.Tensor:
        """Multi-hot (N, C) float32 of the classes present in each image."""
        out = torch.zeros(len(self), num_classes)
        image = torch.repeat_interleave(torch.arange(len(self)), self.offsets.diff())
        out[image, self.labels] = 1.0
        return out

    def image_of_rows(self) -> torch.Tensor:
        """The image each box row belongs to (int64, M)."""
        return torch.repeat_interleave(torch.arange(len(self)), self.offsets.diff())

    @classmethod
    def from_dicts(cls, dicts: list[dict], scores: bool | None = None) -> "Boxes":
        """From torchvision-style dicts ({"boxes", "labels"[, "scores"]}); scores are kept when every dict
        has them (or when `scores` says so)."""
        if scores is None:
            scores = bool(dicts) and all("scores" in d for d in dicts)
        offsets = torch.zeros(len(dicts) + 1, dtype=torch.int64)
        if dicts:
            offsets[1:] = torch.tensor([len(d["labels"]) for d in dicts], dtype=torch.int64).cumsum(0)

        def cat(key: str, dtype: torch.dtype, width: int | None) -> torch.Tensor:
            shape = (-1,) if width is None else (-1, width)
            if not dicts:
                return torch.zeros((0,) if width is None else (0, width), dtype=dtype)
            return torch.cat([d[key].detach().reshape(shape).to("cpu", dtype) for d in dicts])

        return cls(offsets, cat("boxes", torch.float32, 4), cat("labels", torch.int64, None),
                   cat("scores", torch.float32, None) if scores else None)

    @classmethod
    def cat(cls, parts: list["Boxes"]) -> "Boxes":
        with_scores = bool(parts) and all(p.scores is not None for p in parts)
        return cls.from_dicts([p.of(i) for p in parts for i in range(len(p))], scores=with_scores)


def check_boxes(b: Boxes, height: int, width: int, where: str) -> None:
    """Refuse NaN, zero or negative area, or a box outside the image, naming the first bad row."""
    x = b.boxes
    bad = (~torch.isfinite(x).all(1) | (x[:, 2] <= x[:, 0]) | (x[:, 3] <= x[:, 1])
           | (x[:, 0] < 0) | (x[:, 1] < 0) | (x[:, 2] > width) | (x[:, 3] > height))
    if bad.any():
        row = int(bad.nonzero()[0])
        image = int(b.image_of_rows()[row])
        raise DplError(f"{where}: image {image} has a box {[round(v, 2) for v in x[row].tolist()]} that is empty, "
                       f"not finite or outside the {width}x{height} image")


def _coco_json(b: Boxes, predictions: bool) -> list[dict]:
    xywh = b.boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    image = b.image_of_rows() + 1
    rows = []
    for k, (box, img, label) in enumerate(zip(xywh.tolist(), image.tolist(), b.labels.tolist())):
        row = {"id": k + 1, "image_id": img, "category_id": label + 1, "bbox": box, "area": box[2] * box[3],
               "iscrowd": 0}
        if predictions:
            row["score"] = float(b.scores[k])
        rows.append(row)
    return rows


def mean_average_precision(pred: Boxes, truth: Boxes, classes: list[str]) -> dict:
    """COCO box AP by pycocotools' COCOeval: AP@[.5:.95] (`map`), AP@.5, AP@.75, and per class. Classes absent
    from the truth are left out of the per-class figures and of the means, as COCOeval does."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(pred) != len(truth):
        raise DplError(f"{len(pred)} images of predictions against {len(truth)} of ground truth")
    if pred.scores is None:
        raise DplError("predicted boxes need scores to be ranked")
    present = sorted(set(truth.labels.tolist()))
    if not present:
        raise DplError("no ground-truth boxes to measure against")
    empty = {"map": 0.0, "map50": 0.0, "map75": 0.0, "per_class": {classes[c]: 0.0 for c in present},
             "per_class50": {classes[c]: 0.0 for c in present}}
    if not len(pred.labels):
        return empty
    with contextlib.redirect_stdout(io.StringIO()):    # pycocotools reports on stdout, which carries results only
        gt = COCO()
        gt.dataset = {"images": [{"id": i + 1} for i in range(len(truth))],
                      "categories": [{"id": c + 1, "name": name} for c, name in enumerate(classes)],
                      "annotations": _coco_json(truth, predictions=False)}
        gt.createIndex()
        dt = gt.loadRes(_coco_json(pred, predictions=True))
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.catIds = [c + 1 for c in present]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]   # IoU threshold x recall x class, area "all", 100 detections

    def ap(p: np.ndarray) -> float:
        p = p[p > -1]
        return float(p.mean()) if p.size else 0.0

    at50 = list(np.round(ev.params.iouThrs, 2)).index(0.5)
    return {"map": float(max(ev.stats[0], 0.0)), "map50": float(max(ev.stats[1], 0.0)),
            "map75": float(max(ev.stats[2], 0.0)),
            "per_class": {classes[c]: ap(precision[:, :, k]) for k, c in enumerate(present)},
            "per_class50": {classes[c]: ap(precision[at50, :, k]) for k, c in enumerate(present)}}


def _matches(pred: Boxes, truth: Boxes, iou: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy class-aware matching by descending score, per image: each prediction takes the unmatched true
    box of its class it overlaps most, if that IoU reaches `iou`. Returns every prediction's score and whether
    it matched. Predictions above a threshold are a prefix of this order, so their matching is the same as a
    matching run on them alone."""
    scores, hits = [], []
    for i in range(len(pred)):
        p, t = pred.of(i), truth.of(i)
        order = torch.argsort(p["scores"], descending=True, stable=True)
        overlap = box_iou(p["boxes"][order], t["boxes"]) if len(t["boxes"]) and len(order) else None
        taken = torch.zeros(len(t["boxes"]), dtype=torch.bool)
        hit = torch.zeros(len(order), dtype=torch.bool)
        for r, k in enumerate(order.tolist()):
            if overlap is None:
                break
            candidates = overlap[r].clone()
            candidates[taken | (t["labels"] != p["labels"][k])] = -1.0
            best = int(candidates.argmax())
            if candidates[best] >= iou:
                taken[best] = True
                hit[r] = True
        scores.append(p["scores"][order])
        hits.append(hit)
    return torch.cat(scores), torch.cat(hits)


def precision_recall(pred: Boxes, truth: Boxes, iou: float = 0.5,
                     thresholds=(0.05, 0.3, 0.5, 0.7, 0.9)) -> list[dict]:
    """Precision and recall at IoU `iou` for the predictions scoring at least each threshold."""
    if len(pred) != len(truth):
        raise DplError(f"{len(pred)} images of predictions against {len(truth)} of ground truth")
    scores, hits = _matches(pred, truth, iou)
    total = len(truth.labels)
    out = []
    for t in thresholds:
        kept = scores >= t
        tp, n = int(hits[kept].sum()), int(kept.sum())
        out.append({"threshold": float(t), "precision": tp / n if n else 0.0, "recall": tp / total if total else 0.0,
                    "tp": tp, "fp": n - tp, "fn": total - tp})
    return out


def corloc(pred: Boxes, truth: Boxes, iou: float = 0.5) -> float:
    """Correct localisation: over the (image, class present in the truth) pairs, the share whose top-scoring
    predicted box of that class overlaps a true box of that class with IoU >= `iou` (no box: a miss)."""
    if len(pred) != len(truth):
        raise DplError(f"{len(pred)} images of predictions against {len(truth)} of ground truth")
    pairs = hits = 0
    for i in range(len(truth)):
        p, t = pred.of(i), truth.of(i)
        for c in t["labels"].unique().tolist():
            pairs += 1
            mine = p["labels"] == c
            if not mine.any():
                continue
            top = p["boxes"][mine][p["scores"][mine].argmax()]
            hits += bool((box_iou(top[None], t["boxes"][t["labels"] == c]) >= iou).any())
    if not pairs:
        raise DplError("no ground-truth boxes to measure against")
    return hits / pairs


def pseudo_box_quality(pred: Boxes, truth: Boxes, classes: list[str]) -> dict:
    """Pseudo-boxes against the truth of the images they were made for: precision and recall at IoU 0.5 per score
    threshold, CorLoc, and COCO mAP with the pseudo-boxes taken as detections."""
    if not len(truth.labels):
        raise DplError("no ground-truth boxes to measure against")
    found = mean_average_precision(pred, truth, classes)
    return {"images": len(truth), "boxes": len(pred.labels), "truth_boxes": len(truth.labels),
            "precision_recall": precision_recall(pred, truth, 0.5), "corloc": corloc(pred, truth),
            "map50": found["map50"], "map": found["map"], "map75": found["map75"], "per_class50": found["per_class50"]}


# Box label folders ------------------------------------------------------------------------------------------


@dataclass
class BoxLabels:
    """A whole box label folder, read and checked; rows sorted by index."""

    index: torch.Tensor       # int64 (n,): position in the data that was labeled
    boxes: Boxes              # with scores; image i of `boxes` is sample index[i]
    meta: dict
    path: Path
    sha256: str

    def __len__(self) -> int:
        return len(self.index)


def is_box_folder(folder: Path) -> bool:
    """Whether a folder holds box label shards (False for anything unreadable: its reader will say why)."""
    return artifacts.folder_kind(folder) == KIND


def write_box_shard(folder: Path, meta: dict, rank: int, seq: int, rank_shards: int, index: torch.Tensor,
                    boxes: Boxes) -> Path:
    """Shard `seq` of rank `rank`'s `rank_shards` into the box label folder, atomically. `meta` is the
    folder's common metadata (BOX_KEYS, and any more)."""
    if boxes.scores is None or len(boxes) != len(index):
        raise ValueError("a box shard needs scores and one image of boxes per index")
    path = Path(folder) / artifacts.shard_name(rank, seq)
    tensors = {"index": index.to("cpu", torch.int64).contiguous(), "box_offsets": boxes.offsets.contiguous(),
               "boxes": boxes.boxes.contiguous(), "box_label": boxes.labels.contiguous(),
               "box_score": boxes.scores.contiguous()}
    artifacts.save(path, tensors, KIND, artifacts.shard_meta(meta, rank, seq, rank_shards, len(index)))
    return path


def read_box_shard(h: artifacts.Header, num_classes: int) -> tuple[torch.Tensor, Boxes]:
    """One box shard's image positions and boxes, its tensors checked against each other and its count."""
    tensors = artifacts.load_tensors(h)
    for name, (dtype, ndim) in BOX_TENSORS.items():
        t = tensors.get(name)
        if t is None or t.dtype != dtype or t.ndim != ndim:
            raise DplError(f"{h.path}: box shard tensor {name!r} is missing or not {ndim}-d {dtype}")
    n, m, offsets = len(tensors["index"]), len(tensors["box_label"]), tensors["box_offsets"]
    if (n != h.meta["count"] or len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != m
            or (offsets.diff() < 0).any() or tensors["boxes"].shape != (m, 4) or len(tensors["box_score"]) != m):
        raise DplError(f"{h.path}: its box tensors do not match each other or its count")
    if ((tensors["box_label"] < 0) | (tensors["box_label"] >= num_classes)).any():
        raise DplError(f"{h.path}: box classes outside 0..{num_classes - 1}")
    return tensors["index"], Boxes(offsets, tensors["boxes"], tensors["box_label"], tensors["box_score"])


def read_box_labels(folder: Path) -> BoxLabels:
    """Read and check a whole box label folder: its kind, each shard's tensors, and that the shards cover
    samples 0..total-1 exactly once."""
    folder = Path(folder)
    headers = artifacts.shard_headers(folder, kind=KIND, keys=BOX_KEYS)
    meta = headers[0].meta
    artifacts.check_complete(folder, headers, meta["world"], allow_partial=False)
    c = meta["num_classes"]
    index, parts = [], []
    for h in headers:
        shard_index, shard_boxes = read_box_shard(h, c)
        index.append(shard_index)
        parts.append(shard_boxes)
    index_all = torch.cat(index)
    total = meta["total"]
    if len(index_all) != total or not torch.equal(index_all.sort().values, torch.arange(total)):
        raise DplError(f"{folder}: the shards do not cover samples 0..{total - 1} exactly once")
    order = torch.argsort(index_all)
    boxes = Boxes.cat(parts).subset(order)
    check_boxes(boxes, *meta["image_size"], str(folder))
    if not (torch.isfinite(boxes.scores).all() and ((boxes.scores >= 0) & (boxes.scores <= 1)).all()):
        raise DplError(f"{folder}: a box score is not a confidence in [0, 1]")
    return BoxLabels(index_all[order], boxes, meta, folder, artifacts.folder_sha256(folder))
