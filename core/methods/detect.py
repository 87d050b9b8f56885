"""Object detection: Faster R-CNN, RetinaNet and FCOS detectors (`models.DETECTOR_FAMILIES`) taught on boxes, measured
by COCO mAP, labeling pseudo-boxes, and distilled offline (ground truth plus pseudo-boxes) or online (Chen et al.,
NeurIPS 2017; Faster R-CNN only).

Boxes are pixels (x1, y1, x2, y2) of the stored image and class indices 0..C-1 (`boxes.Boxes`); torchvision's
class 0 is the background, so labels are shifted by one at the model's boundary (`to_model`, `detect`).

Online distillation (`ChenOptions`), all three terms computed on the STUDENT's RoIs:
    soft   class-weighted soft cross-entropy  -sum_c w_c P_t(c) log P_s(c) on the RoI classifier, at temperature T,
           w_0 = `background_weight` (1.5 in the paper) for the background and 1 for the objects; the same on the
           RPN's objectness (two classes) where the two RPNs share anchors and feature-map size.
    bound  teacher-bounded regression: ||R_s - y||^2 on the positive RoIs where ||R_s - y||^2 + m > ||R_t - y||^2,
           else 0 (R the class-specific box regression of the true class, y its target, m the margin).
    hint   1/2 mean squared error between the teacher's backbone features and the student's through an adaptation
           layer (`models.make_regressor`).
The teacher's classification and regression are its own RoI heads (box_roi_pool, box_head, box_predictor) run on
its own feature map with the student's proposals, so both score the same regions.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import DplError, artifacts, losses, models
from ..data import augment, images as image_files
from ..data.boxes import BoxLabels, Boxes
from ..data.scenes import BoxData
from .common import ModelOptions, Trained, parent, train_record, weights_record, ValOptions
from ..engine.train import (
    Mix, Progress, ResumeSpec, Runtime, TrainConfig, fit, paired_indices, seed_everything, steps_per_epoch
)

TASK = "detector"
TERMS = models.DETECTOR_TERMS      # each family's loss names -> dpl's terms (models.DETECTOR_FAMILIES)
ANCHOR_KEYS = ("image_size", "anchor_min", "anchor_max")
PHOTOMETRIC = ("brightness", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")


# ---- the labeled / unlabeled split of scenes ---------------------------------------------------------

def split_images(n: int, labeled: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labeled, unlabeled) positions among n images, each sorted: `labeled` of them drawn by a permutation seeded
    `seed`; all labeled when `labeled` is None."""
    if labeled is None:
        return torch.arange(n), torch.zeros(0, dtype=torch.int64)
    if not 1 <= labeled < n:
        raise DplError(f"--labeled must be between 1 and {n - 1} (the split has {n} images), got {labeled}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:labeled].sort().values, order[labeled:].sort().values


def part_of(data: BoxData, labeled: int | None, seed: int, part: str) -> BoxData:
    """The labeled, unlabeled or whole part of `data` under the split `split_images(labeled, seed)`, its record
    saying which (`part`, `labeled_images`, `split_seed`), so that label and distill find the same images."""
    if part not in ("labeled", "unlabeled", "all"):
        raise DplError(f"--part must be labeled, unlabeled or all, got {part!r}")
    if labeled is None and part != "all":
        raise DplError(f"--part {part} needs a split of the images: give --labeled N")
    labeled_idx, unlabeled_idx = split_images(len(data), labeled, seed)
    picked = data if part == "all" else data.subset(labeled_idx if part == "labeled" else unlabeled_idx)
    split = {"labeled_images": labeled, "split_seed": seed} if labeled is not None else {}
    return BoxData(picked.images, picked.truth, picked.classes, {**picked.record, "part": part, **split}, picked.notes)


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


# ---- box-aware noise ----------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class BoxNoise:
    """The student's noise on images with boxes: photometric RandAugment ops (N ops at magnitude M), then a zoom about
    the centre by a factor drawn in `scale` (pixels outside the canvas are lost, the border is black) and a
    horizontal flip, each with its boxes transformed. A box left with less than half its area inside the canvas is
    dropped."""

    flip: bool = True
    scale: tuple[float, float] | None = None
    photometric: tuple[int, int] | None = None

    def __post_init__(self):
        if self.scale is not None and not 0.25 <= self.scale[0] <= self.scale[1] <= 4.0:
            raise DplError(f"--scale-jitter LO,HI needs 0.25 <= LO <= HI <= 4, got {self.scale}")

    def record(self) -> dict:
        return {"hflip": self.flip, "scale_jitter": list(self.scale) if self.scale else None,
                "randaugment": list(self.photometric) if self.photometric else None, "box_aware": True}

    def apply(self, x: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, list[dict]]:
        """uint8 (B, C, H, W) images and their targets ({"boxes", "labels"}) -> both noised alike."""
        if self.photometric:
            x = photometric(x, *self.photometric)
        if self.scale is not None and self.scale != (1.0, 1.0):
            lo, hi = self.scale
            factors = lo + (hi - lo) * torch.rand(len(x), device=x.device)
            x, targets = zoom(x, targets, factors)
        if self.flip:
            x, targets = hflip(x, targets, torch.rand(len(x), device=x.device) < 0.5)
        return x, targets


def photometric(x: torch.Tensor, n: int, magnitude: int) -> torch.Tensor:
    """RandAugment restricted to the ops that move no pixel (the boxes stay valid): `n` per image."""
    m = magnitude / augment.MAX_MAGNITUDE
    out = x.clone()
    for _ in range(n):
        choice = torch.randint(0, len(PHOTOMETRIC), (len(x),), device=x.device)
        sign = torch.where(torch.rand(len(x), device=x.device) < 0.5, -1.0, 1.0)
        for k, name in enumerate(PHOTOMETRIC):
            for s in (-1.0, 1.0):
                idx = ((choice == k) & (sign == s)).nonzero().squeeze(1)
                if idx.numel():
                    out[idx] = augment.OPS[name](out[idx], m, s)
    return out


def hflip(x: torch.Tensor, targets: list[dict], flip: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    """Mirror the images where `flip` (B,) is set, and their boxes: x1' = W - x2, x2' = W - x1."""
    w = x.shape[-1]
    out = []
    for t, f in zip(targets, flip.tolist()):
        b = t["boxes"]
        out.append({**t, "boxes": torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1) if f else b})
    return torch.where(flip[:, None, None, None], x.flip(-1), x), out


def zoom(x: torch.Tensor, targets: list[dict], factors: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    """Scale each image about its centre by factors[i] (bilinear; the canvas keeps its size), and its boxes:
    p' = (p - c) * s + c, clipped to the canvas; a box keeping less than half its area is dropped."""
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / factors
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.round().clamp(0, 255).to(torch.uint8)
    centre = torch.tensor([w / 2, h / 2, w / 2, h / 2], device=x.device)
    limit = torch.tensor([w, h, w, h], dtype=torch.float32, device=x.device)
    moved = []
    for t, s in zip(targets, factors.tolist()):
        full = (t["boxes"] - centre) * s + centre
        kept = torch.minimum(full.clamp(min=0), limit)
        area = lambda q: (q[:, 2] - q[:, 0]).clamp(min=0) * (q[:, 3] - q[:, 1]).clamp(min=0)   # noqa: E731
        keep = (area(kept) >= 0.5 * area(full)) & (kept[:, 2] - kept[:, 0] >= 1) & (kept[:, 3] - kept[:, 1] >= 1)
        moved.append({**{k: v[keep] for k, v in t.items()}, "boxes": kept[keep]})
    return out, moved


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
    from ..data.boxes import mean_average_precision

    started = time.perf_counter()
    pred = detect(model, images, input_meta, rt, batch_size)
    seconds = time.perf_counter() - started
    return {**mean_average_precision(pred, truth, classes), "images_per_s": len(images) / seconds,
            "detections": len(pred.boxes), "n": len(images)}


# ---- teaching: supervised training on boxes --------------------------------------------------------------

def detection_objective(model: nn.Module, truth: Boxes, input_meta: dict, noise: BoxNoise, rt: Runtime):
    """Faster R-CNN's own four losses (RPN objectness and box, RoI class and box) on noised images and boxes."""
    def step(batch):
        idx, images = batch
        x, targets = noise.apply(images, targets_of(truth, idx, rt.device))
        found = model(augment.to_input(x, input_meta["mean"], input_meta["std"], rt.cuda), to_model(targets))
        return {TERMS[k]: v for k, v in found.items()}, {}
    return step


def teach(train: BoxData, test: BoxData | None, model_opts: ModelOptions, noise: BoxNoise, cfg: TrainConfig,
          rt: Runtime, on_progress: Progress | None = None, resume: ResumeSpec | None = None,
          parents: list[dict] = (), **sections) -> Trained:
    """Train a detector on `train`'s boxes (Faster R-CNN's losses through `train.fit`); `test` is measured once
    trained, for the checkpoint's metrics."""
    if len(train) == 0:
        raise DplError("no images to train the detector on")
    seed_everything(cfg.seed)
    model, spec, own = make_detector(model_opts, train.images, train.truth, train.classes)
    model = rt.prepare(model)
    mean, std = image_files.normalization(train.images)
    input_meta = artifacts.input_meta(train.images.shape[1], train.images.shape[2], mean, std)
    batch_size = min(cfg.batch_size, len(train))
    history = fit(model, detection_objective(model, train.truth, input_meta, noise, rt),
                  rt.place(train.images).shuffled(batch_size, cfg.seed), steps_per_epoch(len(train), batch_size),
                  cfg, rt, on_progress, resume, batch_images=batch_size)
    return _trained(model, spec, train, test, input_meta, [*own, *parents], cfg, batch_size, noise, history, rt,
                    **sections)


def _trained(model, spec, train: BoxData, test: BoxData | None, input_meta: dict, parents: list[dict], cfg, batch_size,
             noise: BoxNoise, history: list[dict], rt: Runtime, objective: dict | None = None, **sections) -> Trained:
    metrics = {"train_loss": history[-1]["loss"]}
    if test is not None:
        m = measure(model, test.images, test.truth, test.classes, input_meta, rt)
        metrics.update(test_map=m["map"], test_map50=m["map50"], test_spec=test.record.get("spec"))
    meta = {"task": TASK, "arch": spec, "num_classes": spec["num_classes"], "classes": train.classes,
            "input": input_meta, "data": train.record, "parents": list(parents), "metrics": metrics, "seed": cfg.seed,
            "train": train_record(cfg, batch_size, None, **noise.record()),
            "history": [{k: v for k, v in h.items() if not isinstance(v, list)} for h in history],
            "weights": weights_record(history, cfg, ValOptions()), **sections}
    return Trained(model.cpu(), meta, history, objective or {})


# ---- the offline student's step: labeled and pseudo-labeled images, each part weighed ------------------------

@dataclass(frozen=True, kw_only=True)
class PseudoOptions:
    """How the offline student takes its pseudo-labeled images. Balanced (STAC, Unbiased Teacher): each step takes
    --batch-size labeled images and `ratio` pseudo-labeled ones per labeled one, in a forward pass of their own whose
    detector's losses are weighted `weight`. Pooled (both None): one shuffled stream of both parts, every image
    alike, where 100 labeled images are drowned by 900 pseudo-labeled ones."""

    ratio: float | None = None          # pseudo-labeled images per labeled image in a step [3 when balanced]
    weight: float | None = None         # weight of the pseudo-labeled images' losses [1]

    def __post_init__(self):
        if self.ratio is not None and not (self.ratio > 0 and math.isfinite(self.ratio)):
            raise DplError(f"--unlabeled-ratio must be a finite number > 0, got {self.ratio}")
        if self.weight is not None and not (self.weight >= 0 and math.isfinite(self.weight)):
            raise DplError(f"--unlabeled-weight must be a finite number >= 0, got {self.weight}")

    @property
    def pooled(self) -> bool:
        return self.ratio is None and self.weight is None

    def record(self) -> dict:
        if self.pooled:
            return {"steps": "pooled"}
        return {"steps": "balanced", "unlabeled_ratio": 3.0 if self.ratio is None else self.ratio,
                "unlabeled_weight": 1.0 if self.weight is None else self.weight}


def pseudo_objective(model: nn.Module, truth: Boxes, n_labeled: int, input_meta: dict, noise: BoxNoise,
                     opts: PseudoOptions, rt: Runtime):
    """The labeled images' detector losses, plus those of the pseudo-labeled images (rows `n_labeled` on of
    `truth`) from a second forward pass, weighted and named pseudo_*."""
    weight = 1.0 if opts.weight is None else opts.weight

    def step(batch):
        (il, iu), images = batch
        parts = [(p, i) for p, i in (("", il), ("pseudo_", None if iu is None else iu + n_labeled)) if i is not None]
        x, targets = noise.apply(images, targets_of(truth, torch.cat([i for _, i in parts]), rt.device))
        terms, start = {}, 0
        for prefix, idx in parts:
            stop = start + len(idx)
            found = model(augment.to_input(x[start:stop], input_meta["mean"], input_meta["std"], rt.cuda),
                          to_model(targets[start:stop]))
            terms.update({prefix + TERMS[k]: (weight * v if prefix else v) for k, v in found.items()})
            start = stop
        return terms, {}
    return step


def distill_pseudo(train: BoxData, n_labeled: int, test: BoxData | None, model_opts: ModelOptions, noise: BoxNoise,
                   opts: PseudoOptions, cfg: TrainConfig, rt: Runtime, on_progress: Progress | None = None,
                   resume: ResumeSpec | None = None, parents: list[dict] = (), **sections) -> Trained:
    """The offline student on `train` (its first `n_labeled` images labeled, the rest pseudo-labeled, as
    `with_pseudo_boxes` makes it), pooled or balanced (`PseudoOptions`)."""
    if opts.ratio is not None and not 0 < n_labeled < len(train):
        raise DplError("--unlabeled-ratio mixes labeled and pseudo-labeled images, and this run has only "
                       f"{'labeled' if n_labeled else 'pseudo-labeled'} ones")
    if not opts.pooled and n_labeled == len(train):
        raise DplError("no pseudo-labeled image keeps a box at this --min-confidence: there is no pseudo part to "
                       "weigh (--unlabeled-weight)")
    if opts.pooled:
        return teach(train, test, model_opts, noise, cfg, rt, on_progress, resume, parents, **sections)
    seed_everything(cfg.seed)
    model, spec, own = make_detector(model_opts, train.images, train.truth, train.classes)
    model = rt.prepare(model)
    mean, std = image_files.normalization(train.images)
    input_meta = artifacts.input_meta(train.images.shape[1], train.images.shape[2], mean, std)
    n_pseudo = len(train) - n_labeled
    # An epoch is one pass over the pseudo-labeled part; the labeled part recurs.
    mix = Mix.plan(n_labeled, n_pseudo, cfg.batch_size, 3.0 if opts.ratio is None else opts.ratio)
    feed, gather = rt.place(train.images), partial(_gather_parts, n_labeled=n_labeled)
    batches = lambda epoch: feed(paired_indices(n_labeled, mix.labeled, n_pseudo, mix.pseudo, mix.steps,  # noqa: E731
                                                cfg.seed, epoch, rt.device), gather)
    history = fit(model, pseudo_objective(model, train.truth, n_labeled, input_meta, noise, opts, rt), batches,
                  mix.steps, cfg, rt, on_progress, resume, batch_images=mix.labeled + mix.pseudo)
    return _trained(model, spec, train, test, input_meta, [*own, *parents], cfg, mix.labeled + mix.pseudo, noise,
                    history, rt, **sections)


def _gather_parts(batch, images: torch.Tensor, n_labeled: int) -> torch.Tensor:
    il, iu = batch
    return images[torch.cat([i for i in (il, None if iu is None else iu + n_labeled) if i is not None])]


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
    from ..data.boxes import KIND, read_box_shard, write_box_shard

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


# ---- online distillation: Chen et al. 2017 -----------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ChenOptions:
    """The three terms of Chen et al. and their knobs; a weight of 0 switches a term off."""

    soft_weight: float = 1.0            # weighted soft CE on the RoI classifier (mixed with the hard CE, kept at 1)
    rpn_weight: float = 1.0             # the same on the RPN objectness (when the RPNs share anchors)
    bound_weight: float = 0.5           # nu, the teacher-bounded regression term
    hint_weight: float = 0.0            # the hint through the adaptation layer (FitNets' form, 1/2 MSE)
    background_weight: float = 1.5      # w_0 of the soft CE
    tau: float = 1.0
    margin: float = 0.0                 # m of the bounded regression

    def __post_init__(self):
        for flag, v in (("--soft-weight", self.soft_weight), ("--rpn-weight", self.rpn_weight),
                        ("--bound-weight", self.bound_weight), ("--hint-weight", self.hint_weight),
                        ("--bound-margin", self.margin)):
            if not (v >= 0 and math.isfinite(v)):
                raise DplError(f"{flag} must be a finite number >= 0, got {v}")
        if not (self.background_weight > 0 and self.tau > 0):
            raise DplError("--background-weight and --tau must be > 0")


def weighted_soft_ce(student_logits: torch.Tensor, teacher_logits: torch.Tensor, background_weight: float,
                     tau: float = 1.0) -> torch.Tensor:
    """-sum_c w_c P_t(c) log P_s(c), mean over rows; column 0 is the background (weight w_0), the rest weigh 1."""
    w = torch.ones(student_logits.shape[1], device=student_logits.device)
    w[0] = background_weight
    p_t = (teacher_logits.float() / tau).softmax(1)
    return -(w * p_t * (student_logits.float() / tau).log_softmax(1)).sum(1).mean()


def weighted_soft_bce(student_logits: torch.Tensor, teacher_logits: torch.Tensor, background_weight: float,
                      tau: float = 1.0) -> torch.Tensor:
    """The two-class form on objectness logits: object weighs 1, background w_0."""
    s, t = student_logits.float() / tau, (teacher_logits.float() / tau).sigmoid()
    return -(t * F.logsigmoid(s) + background_weight * (1 - t) * F.logsigmoid(-s)).mean()


def bounded_regression(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Chen's L_b: ||R_s - y||^2 where it exceeds ||R_t - y||^2 - m, else 0; mean over rows ((n, 4) each)."""
    if len(target) == 0:
        return student.sum() * 0.0
    s_err = (student.float() - target).pow(2).sum(1)
    t_err = (teacher.float() - target).pow(2).sum(1)
    return torch.where(s_err + margin > t_err, s_err, torch.zeros_like(s_err)).mean()


def class_regression(box_regression: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The (n, 4) regression of each row's own class out of (n, 4 * (C + 1))."""
    return box_regression.reshape(len(labels), -1, 4)[torch.arange(len(labels), device=labels.device), labels]


def roi_outputs(model: nn.Module, features: dict, proposals: list[torch.Tensor], sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """A detector's RoI classifier and regression on given proposals (its box_roi_pool, box_head, box_predictor)."""
    heads = model.roi_heads
    return heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals, sizes)))


class _Captured:
    """The output of a module's last forward (the student RPN head's objectness, without running it twice)."""

    def __init__(self, module: nn.Module):
        self.out = None
        self.handle = module.register_forward_hook(lambda m, args, out: setattr(self, "out", out))


def chen_objective(student: nn.Module, teacher: nn.Module, adapter: nn.Module | None, truth: Boxes,
                   input_meta: dict, teacher_input: dict, noise: BoxNoise, opts: ChenOptions, rt: Runtime,
                   rpn_soft: bool):
    """The student's Faster R-CNN losses plus Chen et al.'s terms (see the module docstring)."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    rpn_head = _Captured(student.rpn.head)      # removed by `step.release()` once trained

    def step(batch):
        idx, images = batch
        x, targets = noise.apply(images, targets_of(truth, idx, rt.device))
        targets = to_model(targets)
        xs = augment.to_input(x, input_meta["mean"], input_meta["std"], rt.cuda)
        sizes = [(x.shape[-2], x.shape[-1])] * len(x)
        s_feat = student.backbone(xs)
        proposals, rpn_losses = student.rpn(ImageList(xs, sizes), {"0": s_feat}, targets)
        proposals, _, labels, regression_targets = student.roi_heads.select_training_samples(proposals, targets)
        s_logits, s_reg = roi_outputs(student, {"0": s_feat}, proposals, sizes)
        cls, box = fastrcnn_loss(s_logits, s_reg, labels, regression_targets)
        terms = {"cls": cls, "box": box, "rpn_obj": rpn_losses["loss_objectness"],
                 "rpn_box": rpn_losses["loss_rpn_box_reg"]}
        with torch.no_grad():
            t_feat = teacher.backbone(augment.to_input(x, teacher_input["mean"], teacher_input["std"], rt.cuda))
            t_logits, t_reg = roi_outputs(teacher, {"0": t_feat}, proposals, sizes)
            t_objectness = teacher.rpn.head([t_feat])[0][0] if rpn_soft and opts.rpn_weight else None
        if opts.soft_weight:
            terms["soft"] = opts.soft_weight * weighted_soft_ce(s_logits, t_logits, opts.background_weight, opts.tau)
        if t_objectness is not None:
            terms["rpn_soft"] = opts.rpn_weight * weighted_soft_bce(rpn_head.out[0][0], t_objectness,
                                                                    opts.background_weight, opts.tau)
        if opts.bound_weight:
            labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
            pos = labels > 0
            terms["bound"] = opts.bound_weight * bounded_regression(
                class_regression(s_reg, labels)[pos], class_regression(t_reg, labels)[pos], regression_targets[pos],
                opts.margin)
        if opts.hint_weight:
            terms["hint"] = opts.hint_weight * losses.hint_mse(adapter(s_feat), t_feat)
        return terms, {}
    step.release = rpn_head.handle.remove
    return step


def distill_online(train: BoxData, test: BoxData | None, teacher_path: Path, model_opts: ModelOptions, noise: BoxNoise,
                   opts: ChenOptions, cfg: TrainConfig, rt: Runtime, on_progress: Progress | None = None,
                   resume: ResumeSpec | None = None) -> Trained:
    """Chen et al.'s distillation of a detector from a live teacher detector on `train`'s ground-truth boxes."""
    if len(train) == 0:
        raise DplError("no images to train the detector on")
    teacher, t_ckpt = load_detector(teacher_path)
    for role, name in (("--arch", models.parse_arch(model_opts.arch)[0]), (str(teacher_path), t_ckpt.arch["name"])):
        family = models.detector_family(name)
        if family is not None and not family.two_stage:
            raise DplError(f"{role}: {name} is a {family.title}, without the RPN and RoI heads that Chen et al.'s "
                           "online terms read; distil it offline (dpl label, then --labels BOXES/) or use frcnn-BACKBONE")
    check_classes(t_ckpt.meta, train.classes, teacher_path)
    check_images(t_ckpt.meta, train.images, teacher_path)
    seed_everything(cfg.seed)
    # The teacher's anchors, so that the two RPNs' objectness maps line up (the RPN term of the soft loss).
    student, spec, own = make_detector(model_opts, train.images, train.truth, train.classes,
                                       {k: t_ckpt.arch[k] for k in ANCHOR_KEYS[1:] if k in t_ckpt.arch})
    teacher = rt.prepare(teacher).eval().requires_grad_(False)
    student = rt.prepare(student)
    _, c, h, _ = train.images.shape
    s_shape = _feature_shape(student, (c, h, h), rt)
    t_shape = _feature_shape(teacher, (c, h, h), rt)
    adapter = rt.prepare(models.make_regressor(s_shape, t_shape)) if opts.hint_weight else None
    # The RPN objectness maps line up only with the same anchors on a feature map of the same size.
    rpn_soft = s_shape[1:] == t_shape[1:] and all(spec.get(k) == t_ckpt.arch.get(k) for k in ANCHOR_KEYS)
    mean, std = image_files.normalization(train.images)
    input_meta = artifacts.input_meta(c, h, mean, std)
    trained = nn.ModuleDict({"student": student, **({"adapter": adapter} if adapter is not None else {})})
    batch_size = min(cfg.batch_size, len(train))
    objective = chen_objective(student, teacher, adapter, train.truth, input_meta, t_ckpt.input, noise, opts, rt,
                               rpn_soft)
    history = fit(trained, objective, rt.place(train.images).shuffled(batch_size, cfg.seed),
                  steps_per_epoch(len(train), batch_size), cfg, rt, on_progress, resume, batch_images=batch_size)
    objective.release()
    section = {"teacher": str(teacher_path), **asdict(opts), "rpn_soft": rpn_soft and opts.rpn_weight > 0,
               "student_features": list(s_shape), "teacher_features": list(t_shape)}
    objective_tensors = {f"adapter.{k}": v.cpu() for k, v in adapter.state_dict().items()} if adapter is not None else {}
    return _trained(student, spec, train, test, input_meta, [*own, parent("teacher", teacher_path, t_ckpt.sha256())],
                    cfg, batch_size, noise, history, rt, objective_tensors, detect={"distill": "chen", **section})


def _feature_shape(model: nn.Module, shape: tuple[int, int, int], rt: Runtime) -> tuple[int, ...]:
    was = model.backbone.training
    model.backbone.eval()
    with torch.no_grad():
        out = model.backbone(torch.zeros(1, *shape, device=rt.device))
    model.backbone.train(was)
    return tuple(out.shape[1:])
