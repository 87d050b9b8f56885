"""Pseudo-keypoints: what `dpl label` writes from a keypoint model or from part experts (DOPE), how good they are
against the truth, and the training set `dpl distill --labels` makes of them.

A keypoint label folder holds shards (safetensors, kind KIND) of `index` (n,) int64 (the image's position in the
data labeled), `coords` (n, K, 2) float32 in stored-image pixels (pixel i covers [i, i + 1)) and `confidence`
(n, K) float32 in [0, 1] (the heatmap's peak, clipped); its metadata (KEYS) records the teachers, the data record
(spec, part, split, fingerprint) and the keypoint set (names, skeleton, flip pairs, parts, sigmas).

Experts (DOPE, Weinzaepfel et al. 2020): a body expert of whole images places crops around its predicted wrists
and head (crops.py: sized by its predicted torso); a hand expert and a face expert read them; their keypoints are
mapped back onto the image. Together the experts must name every keypoint of the data once: the hand expert's
names (palm, fingertips) count once per side, as left_NAME and right_NAME.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ... import DplError, artifacts
from ...data import augment
from ...data.poses import PoseData, fingerprint
from ...engine.train import Runtime
from .crops import PART_CROPS, crop, to_canvas, torso
from .measure import oks_ap, pck
from .model import KeypointNet, predict

KIND = "keypoints"
KEYS = ("teachers", "data", "names", "skeleton", "flip_pairs", "parts", "sigmas", "image_size", "total", "world")
QUALITY_THRESHOLDS = (0.3, 0.5, 0.7)


@dataclass
class KeypointLabels:
    """A whole keypoint label folder, read and checked; rows sorted by index."""

    index: torch.Tensor        # int64 (n,)
    coords: torch.Tensor       # float32 (n, K, 2)
    confidence: torch.Tensor   # float32 (n, K)
    meta: dict
    path: Path
    sha256: str

    def __len__(self) -> int:
        return len(self.index)


def is_keypoint_folder(folder: Path) -> bool:
    """Whether a folder holds keypoint label shards (False for anything unreadable: its reader says why)."""
    return artifacts.folder_kind(folder) == KIND


def write_labels(folder: Path, meta: dict, index: torch.Tensor, coords: torch.Tensor, confidence: torch.Tensor,
                 shard_size: int) -> None:
    """The folder's shards of `shard_size` images each (one rank), each written atomically."""
    starts = list(range(0, len(index), shard_size)) or [0]
    for seq, lo in enumerate(starts):
        hi = min(lo + shard_size, len(index))
        tensors = {"index": index[lo:hi].to(torch.int64).contiguous(),
                   "coords": coords[lo:hi].float().contiguous(),
                   "confidence": confidence[lo:hi].float().clamp(0, 1).contiguous()}
        artifacts.save(Path(folder) / artifacts.shard_name(0, seq), tensors, KIND,
                       artifacts.shard_meta(meta, 0, seq, len(starts), hi - lo))


def read_labels(folder: Path) -> KeypointLabels:
    """Read and check a keypoint label folder: its kind, each shard's tensors against its count and keypoint set,
    finite coordinates, confidences in [0, 1], and samples 0..total-1 covered exactly once."""
    folder = Path(folder)
    headers = artifacts.shard_headers(folder, kind=KIND, keys=KEYS)
    meta = headers[0].meta
    artifacts.check_complete(folder, headers, meta["world"], allow_partial=False)
    k = len(meta["names"]) if isinstance(meta["names"], list) else -1
    parts = {"index": [], "coords": [], "confidence": []}
    for h in headers:
        t = artifacts.load_tensors(h)
        n = h.meta["count"]
        shapes = {"index": ((n,), torch.int64), "coords": ((n, k, 2), torch.float32),
                  "confidence": ((n, k), torch.float32)}
        for name, (shape, dtype) in shapes.items():
            if name not in t or tuple(t[name].shape) != shape or t[name].dtype != dtype:
                raise DplError(f"{h.path}: keypoint shard tensor {name!r} is missing or not {shape} {dtype}")
            parts[name].append(t[name])
    index, coords, confidence = (torch.cat(parts[name]) for name in ("index", "coords", "confidence"))
    total = meta["total"]
    if len(index) != total or not torch.equal(index.sort().values, torch.arange(total)):
        raise DplError(f"{folder}: the shards do not cover samples 0..{total - 1} exactly once")
    if not torch.isfinite(coords).all():
        raise DplError(f"{folder}: a pseudo-keypoint coordinate is not finite")
    if not (torch.isfinite(confidence).all() and ((confidence >= 0) & (confidence <= 1)).all()):
        raise DplError(f"{folder}: a keypoint confidence is not in [0, 1]")
    order = torch.argsort(index)
    return KeypointLabels(index[order], coords[order], confidence[order], meta, folder,
                          artifacts.folder_sha256(folder))


# ---- labeling -----------------------------------------------------------------------------------------------

def run_model(model: KeypointNet, meta: dict, images: torch.Tensor, rt: Runtime, batch_size: int,
              flip_test: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A keypoint model's (coords, confidence) on uint8 images, un-noised, in its own input normalisation
    (`flip_test`: with its mirror image's heatmaps averaged in, its keypoint set's left and right swapped back)."""
    x = augment.to_input(images.to(rt.device), meta["input"]["mean"], meta["input"]["std"])
    flips = [tuple(p) for p in meta["keypoints"]["flip_pairs"]] if flip_test else None
    return predict(model, x, batch_size, flip_pairs=flips)


def expert_part(meta: dict) -> str:
    """The part a keypoint checkpoint is an expert of (its data's `pose_part`), "whole" for a whole-body model."""
    return (meta.get("data", {}).get("pose_part") or {}).get("part", "whole")


def expert_names(meta: dict) -> list[str]:
    """The data's keypoint names an expert predicts: its own, a hand expert's once per side."""
    names = list(meta["keypoints"]["names"])
    if expert_part(meta) == "hands":
        return [f"{side}_{n}" for side in ("left", "right") for n in names]
    return names


def check_experts(experts: list[tuple[Path, dict]], names: list[str]) -> None:
    """The experts name every keypoint of `names` once, and crops have a body expert to place them."""
    seen: dict[str, Path] = {}
    for path, meta in experts:
        for n in expert_names(meta):
            if n in seen:
                raise DplError(f"{path}: predicts {n}, which {seen[n]} predicts too: give experts of disjoint "
                               "keypoint sets")
            seen[n] = path
    missing, foreign = [n for n in names if n not in seen], [n for n in seen if n not in names]
    if foreign:
        raise DplError(f"{seen[foreign[0]]}: predicts {', '.join(foreign)}, which the data does not have")
    if missing:
        raise DplError(f"the experts leave {len(missing)} keypoints of the data unpredicted: {', '.join(missing)}")
    parts = [expert_part(meta) for _, meta in experts]
    if any(p in PART_CROPS for p in parts) and not any(p in ("body", "whole") for p in parts):
        raise DplError("hand and face experts read crops placed by a body expert's keypoints: give a body expert")


def label_experts(experts: list[tuple[KeypointNet, dict]], images: torch.Tensor, names: list[str], rt: Runtime,
                  batch_size: int = 256, flip_test: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints `names` of uint8 images from one model or from part experts (the module docstring): (coords
    (N, K, 2) in image pixels, confidence (N, K)); `flip_test` for every model."""
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    ordered = sorted(experts, key=lambda e: expert_part(e[1]) in PART_CROPS)       # the body expert first
    for model, meta in ordered:
        part, own = expert_part(meta), list(meta["keypoints"]["names"])
        if part not in PART_CROPS:
            coords, conf = run_model(model, meta, images, rt, batch_size, flip_test)
            found.update({n: (coords[:, i], conf[:, i]) for i, n in enumerate(own)})
            continue
        anchor, ratio = PART_CROPS[part]
        body = list(found)
        length = torso(torch.stack([found[n][0] for n in body], 1), body) * ratio
        size = meta["input"]["size"]
        for side in ("left", "right") if part == "hands" else ("",):
            centre = found[f"{side}_{anchor}" if side else anchor][0]
            coords, conf = run_model(model, meta, crop(images, centre.to(images.device), length.to(images.device),
                                                       size), rt, batch_size, flip_test)
            coords = to_canvas(coords, centre, length, size)
            prefix = f"{side}_" if side else ""
            found.update({prefix + n: (coords[:, i], conf[:, i]) for i, n in enumerate(own)})
    return (torch.stack([found[n][0] for n in names], 1), torch.stack([found[n][1] for n in names], 1))


# ---- quality and the student's data ----------------------------------------------------------------------

def quality(coords: torch.Tensor, confidence: torch.Tensor, truth: PoseData,
            thresholds=QUALITY_THRESHOLDS) -> dict:
    """Pseudo-keypoints against the truth: PCK@0.1 and @0.05 over all keypoints and per part, COCO keypoint AP,
    and per confidence threshold the share of labeled true keypoints kept and the PCK@0.1 of those kept."""
    found = pck(coords, truth.keypoints, truth.boxes, truth.parts)
    out = {"images": len(truth), "pck": found["all"][0.1], "pck05": found["all"][0.05],
           **{f"pck_{p}": found[p][0.1] for p in truth.parts}, **{f"pck05_{p}": found[p][0.05] for p in truth.parts},
           **oks_ap(coords, confidence, truth.keypoints, truth.boxes, truth.sigmas)}
    labeled = truth.keypoints[..., 2] > 0
    rows = []
    for t in thresholds:
        kept = labeled & (confidence >= t)
        masked = truth.keypoints.clone()
        masked[..., 2] = torch.where(kept, masked[..., 2], 0.0)
        rows.append({"min_confidence": t, "kept": float(kept.sum() / labeled.sum().clamp_min(1)),
                     "pck_kept": pck(coords, masked, truth.boxes)["all"][0.1] if kept.any() else None})
    return {**out, "by_confidence": rows}


def with_pseudo(labeled: PoseData | None, pool: PoseData, labels: KeypointLabels, min_confidence: float
                ) -> tuple[PoseData, dict]:
    """The offline student's training set: the labeled images with their true keypoints, then the pool's images
    with their pseudo-keypoints where the confidence is at least `min_confidence` (visibility 2) and unlabeled
    elsewhere (visibility 0: no target, neither keypoint nor background). Returns it and what was kept."""
    if len(labels) != len(pool) or labels.meta["data"].get("fingerprint") != pool.record.get("fingerprint"):
        raise DplError(f"{labels.path}: pseudo-keypoints made for other images ({labels.meta['data'].get('spec')}, "
                       f"{labels.meta['total']} images) than {pool.spec} ({pool.record.get('part', 'all')}, "
                       f"{len(pool)} images)")
    if list(labels.meta["names"]) != list(pool.names):
        raise DplError(f"{labels.path}: pseudo-keypoints of {len(labels.meta['names'])} keypoints, and {pool.spec} "
                       f"has {len(pool.names)} other ones")
    kept = labels.confidence >= min_confidence
    pseudo = replace(pool, keypoints=torch.cat([labels.coords, torch.where(kept, 2.0, 0.0)[..., None]], -1))
    summary = {"labeled_images": len(labeled) if labeled is not None else 0, "pool_images": len(pool),
               "keypoints_kept": int(kept.sum()), "keypoints_stored": kept.numel(), "min_confidence": min_confidence}
    if labeled is None:
        return pseudo, summary
    return concat(labeled, pseudo, "labeled+pseudo"), summary


def without_truth(data: PoseData) -> PoseData:
    """The images with every keypoint unlabeled (visibility 0): learnt from a teacher only."""
    keypoints = data.keypoints.clone()
    keypoints[..., 2] = 0
    return replace(data, keypoints=keypoints)


def concat(first: PoseData, second: PoseData, part: str) -> PoseData:
    """Two sets of images of one keypoint set as one (the second's record, counted and fingerprinted anew)."""
    images, keypoints = torch.cat([first.images, second.images]), torch.cat([first.keypoints, second.keypoints])
    boxes = torch.cat([first.boxes, second.boxes])
    record = {**second.record, "part": part, "n": len(images)}
    record["fingerprint"] = fingerprint(record, images, keypoints, boxes)
    return replace(second, images=images, keypoints=keypoints, boxes=boxes, masks=None, crops=None, record=record)
