"""Measures of predicted keypoints against the truth: PCK per body part, and COCO's keypoint AP by OKS
(pycocotools' COCOeval, iouType "keypoints"), with a plain-numpy OKS to check it against.

Every image shows one figure: predictions are (N, K, 2) pixel coordinates, the truth (N, K, 3) keypoints with
visibility (0: not labeled, not measured; 1 and 2: measured alike), boxes (N, 4) = (x1, y1, x2, y2) in pixels, the
figure's ground-truth box.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import torch

from ... import DplError

PCK_THRESHOLDS = (0.05, 0.1)
AP_FIGURES = ("ap", "ap50", "ap75")


def keypoint_boxes(keypoints: torch.Tensor) -> torch.Tensor:
    """The tight boxes (N, 4) of the labeled keypoints (visibility > 0) of each figure; (0, 0, 0, 0) without one."""
    kp = keypoints.float()
    labeled = kp[..., 2] > 0
    big = torch.finfo(torch.float32).max
    lo = torch.where(labeled[..., None], kp[..., :2], big).amin(1)
    hi = torch.where(labeled[..., None], kp[..., :2], -big).amax(1)
    return torch.where(labeled.any(1)[:, None], torch.cat([lo, hi], 1), 0.0)


def _check(pred: torch.Tensor, truth: torch.Tensor, boxes: torch.Tensor) -> None:
    if pred.dim() != 3 or pred.shape[-1] != 2 or truth.dim() != 3 or truth.shape[-1] != 3:
        raise DplError(f"predictions are (N, K, 2) and the truth (N, K, 3), got {tuple(pred.shape)} and "
                       f"{tuple(truth.shape)}")
    if pred.shape[:2] != truth.shape[:2] or tuple(boxes.shape) != (len(truth), 4):
        raise DplError(f"{tuple(pred.shape[:2])} predicted keypoints against {tuple(truth.shape[:2])} true ones "
                       f"and {tuple(boxes.shape)} boxes")


def pck(pred_coords: torch.Tensor, truth_keypoints: torch.Tensor, boxes: torch.Tensor,
        parts: dict[str, list[int]] | None = None, thresholds=PCK_THRESHOLDS) -> dict[str, dict[float, float]]:
    """The Percentage of Correct Keypoints: {"all": {threshold: fraction}, part: {threshold: fraction}, ...}.

    A predicted keypoint is correct when its distance to the true one is at most threshold x the figure's size,
    the larger side of its ground-truth box (max(x2 - x1, y2 - y1); the "figure size" normaliser, as PCK on a
    person's bounding box); a box of side 0 makes every keypoint not exactly on the truth wrong. The fraction is
    over the labeled true keypoints (visibility > 0) of the part, and NaN where the part has none; "all" covers
    every keypoint. `parts` maps a name to keypoint indices (they may overlap)."""
    _check(pred_coords, truth_keypoints, boxes)
    pred, truth, boxes = pred_coords.detach().float().cpu(), truth_keypoints.detach().float().cpu(), boxes.float().cpu()
    k = truth.shape[1]
    parts = dict(parts or {})
    if "all" in parts:
        raise DplError("'all' names every keypoint; give the part another name")
    for name, idx in parts.items():
        if not all(isinstance(i, int) and 0 <= i < k for i in idx):
            raise DplError(f"part {name!r} names keypoints outside 0..{k - 1}: {list(idx)}")
    size = (boxes[:, 2:] - boxes[:, :2]).amax(1)
    dist = (pred - truth[..., :2]).norm(dim=-1)
    labeled = truth[..., 2] > 0
    out = {}
    for name, idx in {"all": list(range(k)), **parts}.items():
        idx = torch.tensor(list(idx), dtype=torch.long)
        mask, d = labeled[:, idx], dist[:, idx]
        count = int(mask.sum())
        out[name] = {float(t): float(((d <= t * size[:, None]) & mask).sum()) / count if count else math.nan
                     for t in thresholds}
    return out


def oks(pred: np.ndarray, truth: np.ndarray, area: float, sigmas) -> float:
    """Object keypoint similarity of one figure, as COCOeval.computeOks: the mean over the labeled true keypoints
    (visibility > 0) of exp(-d^2 / (2 * area * (2 sigma)^2)), d the distance in pixels, `area` the figure's area
    (here: its box's). pred (K, 2) or (K, 3), truth (K, 3). NaN without a labeled keypoint (COCO ignores such
    a figure)."""
    pred, truth, sig = np.asarray(pred, float), np.asarray(truth, float), np.asarray(sigmas, float)
    labeled = truth[:, 2] > 0
    if not labeled.any():
        return math.nan
    d2 = ((pred[:, :2] - truth[:, :2]) ** 2).sum(1)
    e = d2 / (2 * sig) ** 2 / (area + np.spacing(1)) / 2
    return float(np.exp(-e[labeled]).mean())


def oks_ap(pred_coords: torch.Tensor, pred_confidence: torch.Tensor, truth_keypoints: torch.Tensor,
           boxes: torch.Tensor, sigmas) -> dict[str, float]:
    """COCO keypoint AP by pycocotools' COCOeval (iouType "keypoints", kpt_oks_sigmas = `sigmas`, one per
    keypoint): {"ap": AP@[.5:.95], "ap50": AP@.5, "ap75": AP@.75} over the area range "all".

    One figure per image and one prediction per figure, scored by the mean confidence of its keypoints (the
    ranking of the predictions across images). The figure's area in OKS is its box's area (x2 - x1) * (y2 - y1):
    COCO takes a person's segmentation area, about half of its box's, so OKS here is somewhat more lenient than
    on COCO. Images whose truth has no labeled keypoint are left out (COCOeval would ignore their figure)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _check(pred_coords, truth_keypoints, boxes)
    pred, truth = pred_coords.detach().double().cpu(), truth_keypoints.detach().double().cpu()
    conf, boxes = pred_confidence.detach().double().cpu(), boxes.detach().double().cpu()
    k = truth.shape[1]
    if tuple(conf.shape) != (len(truth), k):
        raise DplError(f"{tuple(conf.shape)} confidences for {len(truth)} images of {k} keypoints")
    if len(sigmas) != k or not all(s > 0 for s in sigmas):
        raise DplError(f"OKS needs one positive sigma per keypoint ({k}), got {list(sigmas)}")
    kept = ((truth[..., 2] > 0).any(1)).nonzero().squeeze(1).tolist()
    if not kept:
        raise DplError("no labeled true keypoint to measure against")
    gts, dts = [], []
    for image_id, n in enumerate(kept, 1):
        x1, y1, x2, y2 = boxes[n].tolist()
        t = truth[n].clone()
        t[:, 2] = t[:, 2].round()
        t[t[:, 2] <= 0] = 0.0                              # COCO's unlabeled keypoint: (0, 0, 0)
        gts.append({"id": image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                    "keypoints": t.flatten().tolist(), "num_keypoints": int((t[:, 2] > 0).sum()),
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        p = torch.cat([pred[n], torch.ones(k, 1, dtype=pred.dtype)], 1)
        dts.append({"image_id": image_id, "category_id": 1, "keypoints": p.flatten().tolist(),
                    "score": float(conf[n].mean())})
    with contextlib.redirect_stdout(io.StringIO()):    # pycocotools reports on stdout
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in range(1, len(kept) + 1)],
                      "categories": [{"id": 1, "name": "figure"}], "annotations": gts}
        gt.createIndex()
        dt = gt.loadRes(dts)
        ev = COCOeval(gt, dt, iouType="keypoints")
        ev.params.kpt_oks_sigmas = np.array(sigmas, dtype=float)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(max(ev.stats[i], 0.0)) for i, name in enumerate(AP_FIGURES)}
