"""A detector and its data: the labeled/unlabeled split of images with boxes, the model (`make_detector`, loading,
the class and canvas checks), inference (`detect`), COCO mAP (`measure`, and `validation_of` for --val), and
pseudo-boxes (`confident`, `label_boxes`)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ... import DplError, artifacts, models
from ...data import augment
from ...data.boxes import BoxLabels, Boxes
from ...data.scenes import BoxData
from ..common import ModelOptions, ValOptions, parent
from ...data.partition import part_of_images, split_images
from ...engine.train import Progress, Runtime, Validation

TASK = "detector"
TERMS = models.DETECTOR_TERMS      # each family's loss names -> dpl's terms (models.DETECTOR_FAMILIES)
ANCHOR_KEYS = ("image_size", "anchor_min", "anchor_max")
VAL = ValOptions(metric="map")      # a detector's --keep best: the epoch of the best validation mAP@[.5:.95]
MAP_FIGURES = ("map", "map50", "map75")


# ---- the labeled / unlabeled split of scenes ---------------------------------------------------------

def part_of(data: BoxData, labeled: int | None, seed: int, part: str) -> BoxData:
    """The labeled, unlabeled or whole part of `data` under the split `split_images(labeled, seed)`, its record
    saying which (`part`, `labeled_images`, `split_seed`), so that label and distill find the same images."""
    return part_of_images(data, labeled, seed, part)


def with_pseudo_boxes(labeled: BoxData | None, pool: BoxData, labels: BoxLabels, min_confidence: float
                      ) -> tuple[BoxData, dict]:
    """The offline student's training set: the labeled images with their true boxes, then the pool's images with
    their pseudo-boxes scoring at least `min_confidence`; a pool image left without a box is left out (it would
    teach that its objects are background). Returns it and what was kept."""
    if len(labels) != len(pool) or labels.meta["data"].get("fingerprint") != pool.record.get("fingerprint"):
        raise DplError(f"{labels.path}: pseudo-boxes made for other images ({labels.meta['data'].get('spec')}, "
                       f"{labels.meta['total']} images) than {pool.spec} ({pool.record.get('part', 'all')}, "
                       f"{len(pool)} images)")
    if list(labels.meta["classes"]) != list(pool.classes):
        raise DplError(f"{labels.path}: its classes differ from those of {pool.spec}")
    kept = confident(labels.boxes, min_confidence)
    has = kept.offsets.diff() > 0
    chosen = has.nonzero().squeeze(1)
    images, truth = pool.images[chosen], kept.subset(chosen)
    truth = Boxes(truth.offsets, truth.boxes, truth.labels)          # trained on as ground truth
    if labeled is not None:
        images, truth = torch.cat([labeled.images, images]), Boxes.cat([labeled.truth, truth])
    if len(images) == 0:
        raise DplError(f"{labels.path}: no pseudo-box scores at least --min-confidence {min_confidence:g}, and no "
                       "labeled images: nothing to train on")
    record = {**pool.record, "part": "labeled+pseudo" if labeled is not None else "pseudo",
              "pseudo_images": int(has.sum()), "n": len(images)}
    if labeled is not None:
        record.update({k: labeled.record[k] for k in ("labeled_images", "split_seed") if k in labeled.record})
    pseudo = {"labels": str(labels.path), "sha256": labels.sha256, "min_confidence": min_confidence,
              "pool_images": len(pool), "images_kept": int(has.sum()), "boxes_kept": len(kept.boxes),
              "boxes_stored": len(labels.boxes.boxes), "labeled_images": len(labeled) if labeled is not None else 0}
    return BoxData(images, truth, pool.classes, record), pseudo



# ---- the model ------------------------------------------------------------------------------------------

def make_detector(opts: ModelOptions, images: torch.Tensor, truth: Boxes, classes: list[str],
                  anchors: dict | None = None) -> tuple[nn.Module, dict, list[dict]]:
    """A detector for these images and boxes: the anchors span the boxes' sides (sqrt of the area; unless the arch
    names anchor_min/anchor_max, or `anchors` gives them); --init a detector checkpoint of the same arch, --pretrained
    torchvision's ImageNet weights for its backbone."""
    name, extra = models.parse_arch(opts.arch)
    if not models.is_detector(name):
        raise DplError(f"--arch {opts.arch} is a classifier; a detector is {models.DETECTOR_NAMES} "
                       f"(e.g. {models.DETECTOR}cnn-m; dpl info --archs lists them)")
    _, c, h, w = images.shape
    if h != w:
        raise DplError(f"detectors take square images, got {h}x{w}")
    spec = models.arch_spec(opts.arch, num_classes=len(classes), in_channels=c, image_size=h,
                            dropout=opts.dropout, stochastic_depth=opts.stochastic_depth)
    for k, v in (anchors or {}).items():
        spec.setdefault(k, v)
    derived = len(truth.boxes) and not {"anchor_min", "anchor_max"} <= spec.keys()
    if len(truth.boxes):
        sides = ((truth.boxes[:, 2] - truth.boxes[:, 0]) * (truth.boxes[:, 3] - truth.boxes[:, 1])).sqrt()
        # The 2nd and 98th percentiles: a stray pseudo-box does not stretch the anchors.
        spec.setdefault("anchor_min", round(float(sides.quantile(0.02)), 2))
        spec.setdefault("anchor_max", round(float(sides.quantile(0.98)), 2))
    try:
        model = models.build(spec)
    except DplError as e:
        if not derived or "cannot serve anchors" not in str(e):
            raise
        raise DplError(f"{e}; the anchors span the training boxes' sides (2nd to 98th percentile): set them with "
                       f"--arch {name}:anchor_min=A,anchor_max=B (for tiny pseudo-boxes, raise --min-confidence)"
                       ) from None
    parents = []
    if opts.pretrained:     # ImageNet weights for the backbone; the heads start afresh
        weights = models.load_pretrained_backbone(model, name)
        parents.append({"role": "pretrained", "path": weights.url, "sha256": artifacts.sha256_file(weights.file)})
    if opts.init is not None:
        init = artifacts.load_checkpoint(opts.init, task=TASK)
        check_classes(init.meta, classes, opts.init)
        artifacts.load_state(model, init.model_state(), opts.init)
        parents.append(parent("init", opts.init, init.sha256()))
    return model, spec, parents


def check_classes(meta: dict, classes: list[str], path) -> None:
    if list(meta.get("classes") or []) != list(classes):
        raise DplError(f"{path}: its classes ({', '.join(meta.get('classes') or [])}) differ from the data's "
                       f"({', '.join(classes)})")


def check_images(meta: dict, images: torch.Tensor, path, what: str = "the data") -> None:
    """The detector's anchors were sized for its canvas: other image sizes are refused."""
    expected = (meta["input"]["channels"], meta["input"]["size"], meta["input"]["size"])
    if tuple(images.shape[1:]) != expected:
        raise DplError(f"{path}: the detector takes {'x'.join(map(str, expected))} images (its anchors are sized for "
                       f"them), {what} has {'x'.join(map(str, images.shape[1:]))}")


def load_detector(path: Path) -> tuple[nn.Module, artifacts.Checkpoint]:
    ckpt = artifacts.load_checkpoint(path, task=TASK)
    return ckpt.build_model(), ckpt


def to_model(targets: list[dict]) -> list[dict]:
    """Targets with torchvision's labels (object classes from 1; 0 is the background)."""
    return [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]


def targets_of(truth: Boxes, idx: torch.Tensor, device) -> list[dict]:
    return truth.subset(idx.cpu()).targets(device)


# ---- inference --------------------------------------------------------------------------------------------

def detect(model: nn.Module, images: torch.Tensor, input_meta: dict, rt: Runtime, batch_size: int = 64,
           emit: Progress | None = None) -> Boxes:
    """The detections of un-noised images (eval mode, inference_mode): boxes in image pixels, classes 0..C-1."""
    model.eval()
    found = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start: start + batch_size].to(rt.device)
            with rt.autocast():
                out = model(augment.to_input(x, input_meta["mean"], input_meta["std"], rt.cuda))
            found += [{"boxes": o["boxes"].float().cpu(), "labels": o["labels"].cpu() - 1,
                       "scores": o["scores"].float().cpu()} for o in out]
            if emit is not None:
                emit({"event": "advance", "n": len(x)})
    return Boxes.from_dicts(found) if found else Boxes.from_dicts([])


def measure(model: nn.Module, images: torch.Tensor, truth: Boxes, classes: list[str], input_meta: dict,
            rt: Runtime, batch_size: int = 64) -> dict:
    """COCO mAP (pycocotools, through boxes.mean_average_precision) and detection speed (images/s)."""
    from ...data.boxes import mean_average_precision

    started = time.perf_counter()
    pred = detect(model, images, input_meta, rt, batch_size)
    seconds = time.perf_counter() - started
    return {**mean_average_precision(pred, truth, classes), "images_per_s": len(images) / seconds,
            "detections": len(pred.boxes), "n": len(images)}



def validation_of(model: nn.Module, val: BoxData | None, input_meta: dict, rt: Runtime,
                  val_opts: ValOptions) -> Validation | None:
    """mAP@[.5:.95], @.5 and @.75 of held-out images with boxes, for --val and --keep best."""
    measured = lambda: measure(model, val.images, val.truth, val.classes, input_meta, rt)     # noqa: E731
    return val_opts.measured(measured if val is not None and len(val) else None, MAP_FIGURES)


# ---- pseudo-boxes -----------------------------------------------------------------------------------------

def confident(pred: Boxes, min_confidence: float) -> Boxes:
    """The boxes scoring at least `min_confidence`, per image (an image may be left with none)."""
    return Boxes.from_dicts([{k: v[pred.of(i)["scores"] >= min_confidence] for k, v in pred.of(i).items()}
                             for i in range(len(pred))])


def label_boxes(model: nn.Module, meta: dict, images: torch.Tensor, index: torch.Tensor, folder: Path,
                folder_meta: dict, rt: Runtime, rank: int = 0, world: int = 1, shard_size: int = 10_000,
                batch_size: int = 64, on_progress: Progress | None = None, resume: bool = False
                ) -> tuple[Boxes, torch.Tensor]:
    """Detect on this rank's contiguous part of `images` (whose positions in the data are `index`) and write it as
    box shards of `shard_size` images (`boxes.write_box_shard`, each atomic); with `resume`, a shard already in
    the folder with this run's metadata is read back, not recomputed. Returns the rank's boxes and positions."""
    from ...data.boxes import KIND, read_box_shard, write_box_shard

    start, stop = rank * len(images) // world, (rank + 1) * len(images) // world
    emit = on_progress or (lambda event: None)
    emit({"event": "total", "total": stop - start})
    parts = []
    starts = list(range(start, stop, shard_size)) or [start]
    for seq, lo in enumerate(starts):
        hi = min(lo + shard_size, stop)
        path = folder / artifacts.shard_name(rank, seq)
        if resume and artifacts.same_shard(path, KIND, artifacts.shard_meta(folder_meta, rank, seq, len(starts), hi - lo)):
            pred = read_box_shard(artifacts.read_header(path, kind=KIND), folder_meta["num_classes"])[1]
            emit({"event": "advance", "n": hi - lo})
        else:
            pred = detect(model, images[lo:hi], meta["input"], rt, batch_size, emit)
            write_box_shard(folder, folder_meta, rank, seq, len(starts), index[lo:hi], pred)
        parts.append(pred)
    return Boxes.cat(parts), index[start:stop]

