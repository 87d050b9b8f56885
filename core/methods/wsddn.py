"""Weakly supervised deep detection networks (`dpl wsddn`; Bilen & Vedaldi, CVPR 2016): a detector learnt from
image-level class labels alone.

A backbone from the registry gives a feature map, read by `models.Taps` (what follows it never runs): by default
the deepest residual block fine enough for the smallest proposal to cover roi x roi cells (`default_feature_layer`:
stride 4 on 64 px images with the default proposals), not the coarser map before global pooling. Region
proposals are a fixed multi-scale sliding grid,
the same for every image and blind to its content (so they never see ground truth): squares of each side in
`proposal_sizes` (fractions of the image side) stretched to each aspect ratio h/w in `proposal_ratios` (the
area kept), at every `proposal_stride` (a fraction of the side) across the image, plus the last position
flush with the right and bottom edges; duplicates dropped. RoIAlign (`torchvision.ops.roi_align`) pools each
region's features to roi x roi, two fully connected layers of width `hidden` (ReLU) describe it, and two
linear streams score it:

    classification  s^cls_rc = softmax over classes c of fc_cls(region r)
    detection       s^det_rc = softmax over regions r of fc_det(region r)
    region score    x_rc = s^cls_rc * s^det_rc,      image score  y_c = sum_r x_rc, clamped to (1e-6, 1 - 1e-6)

and the loss is the binary cross-entropy of y against the image's multi-hot class labels (`bce`). Training
noise is what leaves image labels unchanged: random crop (the image padded by 1/8 of its side) and, where the
source's classes survive it, horizontal flip. RoIAlign of the fixed proposals is a fixed linear map of the
feature map, applied as one matrix (`roi_align_matrix`).

With `refine` K > 0, OICR's online instance classifier refinement (Tang et al., CVPR 2017) adds K streams on
the same region features, each a softmax over the classes and background per region, trained by
`refinement_loss` on the seeds of the stream before it (the first: x; the seeds never see ground truth, only
the image labels); the read-out is then the mean of the K streams' class probabilities. Without refinement
the read-out is x. With `spatial` > 0, WSDDN's spatial regulariser (`spatial_regulariser`) is added to the loss.

Read out, the detections of class c are the proposals ranked by their read-out score, per-class NMS at IoU
NMS_IOU, the best DETECTIONS_PER_CLASS kept; an image's top box of class c is its proposal of largest
read-out score (with refinement, `two_stream_*` figures measure x alone as well). With `vote` < 1 each of
these boxes is then voted (`voted`): the score-weighted mean of the proposals overlapping it by IoU >= vote,
which places it between the grid's positions (`proposal_*corloc` keep the top proposal's CorLoc). The two
baselines of `measure` have the same proposals, the same network and the same voting: the whole image as the
one box of each class (scored y_c), and "objectness without the detection stream": each proposal scored by the
classification stream alone, s^cls_rc (the network's belief that region r shows class c, with no comparison
between regions), ranked, suppressed and voted like the detections.

The checkpoint (`meta["task"] = "wsddn"`) holds the whole network: `backbone.*` (the registry model, `arch`;
its own classifier is unused), `head.*`, `cls.*`, `det.*`; `meta["wsddn"]` says how, and `meta["data"]` is
the data record of the scenes or COCO data it learnt from (`scenes.scene_spec_of` rebuilds them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from .. import DplError, artifacts, data, models
from ..data import augment, images as image_files
from ..data.boxes import Boxes, corloc, mean_average_precision, precision_recall, write_box_shard
from .common import ModelOptions, NoiseOptions, Trained, checkpoint_meta, make_model, train_record
from ..data.scenes import BoxData, load_boxes, scene_spec_of
from ..engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch

TASK = "wsddn"
EPS = 1e-6
SPATIAL_IOU = 0.6             # WSDDN's spatial regulariser: the neighbours of a class's top region
REFINE_IOU = 0.5              # OICR: a region overlapping a seed this much learns the seed's class
NMS_IOU = 0.4                 # per-class NMS of the read-out detections (WSDDN's test-time setting)
DETECTIONS_PER_CLASS = 10     # kept per class and image after NMS (at most 100 per image for COCOeval's maxDets)


@dataclass(frozen=True, kw_only=True)
class WsddnOptions:
    proposal_sizes: tuple[float, ...] = (0.25, 0.375, 0.5)   # square sides, fractions of the image side
    proposal_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)     # aspect ratios h / w (area kept)
    proposal_stride: float = 0.125                           # grid step, a fraction of the image side
    roi: int = 4                                             # RoIAlign output side
    hidden: int = 256                                        # width of the two fully connected layers
    refine: int = 0                                          # OICR-style refinement streams (0: WSDDN alone)
    feature_layer: str | None = None                         # the tapped feature map; None: default_feature_layer
    context: float = 0.0                                     # >1: also pool each region enlarged this much (0: not)
    spatial: float = 0.0                                     # weight of the spatial regulariser (0: none)
    vote: float = 0.2                                        # read-out box voting IoU (1: the top proposal alone)

    def __post_init__(self):
        object.__setattr__(self, "proposal_sizes", tuple(float(s) for s in self.proposal_sizes))
        object.__setattr__(self, "proposal_ratios", tuple(float(r) for r in self.proposal_ratios))
        if not self.proposal_sizes or not all(0 < s <= 1 for s in self.proposal_sizes):
            raise DplError(f"--proposal-sizes are fractions of the image side in (0, 1], got {self.proposal_sizes}")
        if not self.proposal_ratios or not all(0.05 <= r <= 20 for r in self.proposal_ratios):
            raise DplError(f"--proposal-ratios are aspect ratios h/w in [0.05, 20], got {self.proposal_ratios}")
        if not 0 < self.proposal_stride <= 1:
            raise DplError(f"--proposal-stride is a fraction of the image side in (0, 1], got {self.proposal_stride}")
        if not 1 <= self.roi <= 32 or not 1 <= self.hidden <= 8192:
            raise DplError(f"--roi must be in 1..32 and --hidden in 1..8192, got {self.roi} and {self.hidden}")
        if not 0 <= self.refine <= 8:
            raise DplError(f"--refine must be in 0..8, got {self.refine}")
        if not 0 <= self.spatial <= 10_000:
            raise DplError(f"--spatial must be in [0, 10000], got {self.spatial}")
        if not 0 <= self.vote <= 1:
            raise DplError(f"--vote is an IoU in [0, 1] (1: no voting), got {self.vote}")
        if not (self.context == 0 or 1 < self.context <= 4):
            raise DplError(f"--context is an enlargement factor in (1, 4], or 0 for none, got {self.context}")


def grid_proposals(side: int, sizes, ratios, stride: float) -> torch.Tensor:
    """The fixed sliding-grid proposals of a side x side image: float32 (R, 4), (x1, y1, x2, y2) in pixels."""
    step = max(stride * side, 1.0)
    out = []
    for s in sizes:
        for r in ratios:
            w, h = min(side, s * side / math.sqrt(r)), min(side, s * side * math.sqrt(r))

            def starts(extent: float) -> torch.Tensor:
                at = torch.arange(0.0, side - extent + 1e-6, step, dtype=torch.float64)
                return torch.cat([at, torch.tensor([side - extent], dtype=torch.float64)]) if side - extent - at[-1] > 1e-6 else at

            ys, xs = torch.meshgrid(starts(h), starts(w), indexing="ij")
            out.append(torch.stack([xs.flatten(), ys.flatten(), xs.flatten() + w, ys.flatten() + h], 1))
    boxes = torch.unique(torch.cat(out).round(decimals=3), dim=0).float()
    return boxes


def default_feature_layer(model: nn.Module, input_shape: tuple[int, int, int], opts: WsddnOptions) -> str:
    """The deepest residual block (models.block_layers) whose feature map is fine enough for the smallest proposal
    square to cover opts.roi x opts.roi of its cells: stride <= smallest side / roi (stride 4 for the defaults on
    64 px images; 8 on 128 px). The layer before global pooling is usually coarser (stride 8 on cnn-s at 64 px),
    which measured much worse: its cells are as large as the smallest objects."""
    side = input_shape[-1]
    blocks = models.block_layers(model, input_shape)
    if not blocks:
        raise DplError(f"{type(model).__name__}: no feature map (C x H x W) to pool WSDDN's regions from")
    finest = min(opts.proposal_sizes) * side / opts.roi
    fine_enough = [b for b in blocks if side / b["shape"][-1] <= finest + 1e-6]
    return (fine_enough[-1] if fine_enough else blocks[0])["path"]


class Wsddn(nn.Module):
    """The backbone's feature map, RoIAlign over the fixed proposals, two fully connected layers and the
    classification and detection streams: the one module `fit` trains and the checkpoint holds."""

    def __init__(self, backbone: nn.Module, num_classes: int, in_channels: int, image_size: int, opts: WsddnOptions):
        super().__init__()
        self.backbone, self.num_classes, self.vote = backbone, num_classes, opts.vote
        self.layer = opts.feature_layer or default_feature_layer(backbone, (in_channels, image_size, image_size), opts)
        self.taps = models.Taps(backbone, [self.layer], stop=True)   # the backbone's pooling and classifier never run
        shape = models.output_shape(self.taps, self.layer, (in_channels, image_size, image_size))
        if len(shape) != 3:
            raise DplError(f"layer {self.layer!r} gives {'x'.join(map(str, shape))}, not a feature map (C x H x W)")
        channels, h, w = shape
        self.scale, self.roi = h / image_size, opts.roi
        proposals = grid_proposals(image_size, opts.proposal_sizes, opts.proposal_ratios, opts.proposal_stride)
        self.register_buffer("proposals", proposals, persistent=False)
        pooling = roi_align_matrix(proposals, (h, w), opts.roi, self.scale)
        if opts.context:        # each region's surround too (ContextLocNet-like): whether the object goes on past it
            pooling = torch.cat([pooling, roi_align_matrix(enlarged(proposals, opts.context, image_size), (h, w),
                                                           opts.roi, self.scale)])
        self.register_buffer("pooling", pooling, persistent=False)
        self.head = nn.Sequential(nn.Linear(channels * len(pooling) // len(proposals), opts.hidden),
                                  nn.ReLU(inplace=True), nn.Linear(opts.hidden, opts.hidden), nn.ReLU(inplace=True))
        self.cls = nn.Linear(opts.hidden, num_classes)
        self.det = nn.Linear(opts.hidden, num_classes)
        self.refine = nn.ModuleList(nn.Linear(opts.hidden, num_classes + 1) for _ in range(opts.refine))
        self.register_buffer("overlaps", box_iou(proposals, proposals), persistent=False)

    def forward(self, x: torch.Tensor, features: bool = False) -> tuple:
        """Normalized images (B, C, H, W) -> (classification, detection) logits, each (B, R, classes), and the
        refinement streams' logits, each (B, R, classes + 1) with background first; with `features`, also the
        regions' features (B, R, hidden) that the streams read."""
        fmap = self.taps.tensor(x, self.layer)
        b, c, r = len(x), fmap.shape[1], len(self.proposals)
        pooled = fmap.flatten(2) @ self.pooling.to(fmap.dtype).T               # (B, C, R * roi * roi)
        pooled = pooled.view(b, c, -1, r, self.roi * self.roi)                 # (B, C, 1 or 2, R, roi * roi)
        pooled = pooled.permute(0, 3, 2, 1, 4).reshape(b * r, -1)              # roi_align's (B * R, C, roi, roi)
        h = self.head(pooled)
        out = self.cls(h).view(b, r, -1), self.det(h).view(b, r, -1), [k(h).view(b, r, -1) for k in self.refine]
        return (*out, h.view(b, r, -1)) if features else out


def enlarged(boxes: torch.Tensor, factor: float, side: int) -> torch.Tensor:
    """Boxes scaled by `factor` about their centres, clipped to the side x side image."""
    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) * factor / 2
    return torch.cat([centre - half, centre + half], 1).clamp(0, side)


def roi_align_matrix(proposals: torch.Tensor, size: tuple[int, int], roi: int, scale: float) -> torch.Tensor:
    """RoIAlign (torchvision.ops.roi_align, sampling ratio 2, aligned) of fixed proposals is a fixed linear map of
    the feature map: its matrix (R * roi * roi, h * w), found by pooling a one-hot basis of the map once. Pooling
    is then one matrix product, forward and backward (roi_align's CPU backward took half of a training step)."""
    from torchvision.ops import roi_align

    h, w = size
    basis = torch.eye(h * w).view(1, h * w, h, w)
    rois = torch.cat([torch.zeros(len(proposals), 1), proposals.float()], 1)
    m = roi_align(basis, rois, roi, spatial_scale=scale, sampling_ratio=2, aligned=True)   # (R, h*w, roi, roi)
    return m.permute(0, 2, 3, 1).reshape(-1, h * w).contiguous()


def scores_of(cls_logits: torch.Tensor, det_logits: torch.Tensor, refined=()) -> tuple[torch.Tensor, ...]:
    """(region scores x (B, R, C), image scores y (B, C), classification stream s^cls (B, R, C)), in float32."""
    s_cls = cls_logits.float().softmax(2)
    x = s_cls * det_logits.float().softmax(1)
    return x, x.sum(1).clamp(EPS, 1 - EPS), s_cls


def refined_scores(refined: list[torch.Tensor]) -> torch.Tensor | None:
    """The read-out of the refinement streams: the mean of their class probabilities (background left out)."""
    if not refined:
        return None
    return torch.stack([r.float().softmax(2)[..., 1:] for r in refined]).mean(0)


def refinement_loss(logits: torch.Tensor, previous: torch.Tensor, present: torch.Tensor,
                    overlaps: torch.Tensor) -> torch.Tensor:
    """OICR's instance classifier refinement (Tang et al., CVPR 2017): each class present in an image takes the
    previous stream's top region as its seed, weighted by that region's score; a region whose IoU with a seed
    reaches REFINE_IOU learns the class of the seed it overlaps most, the others background (label 0), each
    weighted by the weight of that seed. `previous` (B, R, C) is detached: it teaches, it does not learn here."""
    previous = previous.detach()
    weight, seed = previous.max(1)                                     # (B, C): the seeds and their scores
    weight = weight * present
    iou = overlaps[seed]                                               # (B, C, R)
    iou = torch.where(present.bool()[..., None], iou, torch.full_like(iou, -1.0))
    best, cls = iou.max(1)                                             # (B, R): the seed each region overlaps most
    target = torch.where(best >= REFINE_IOU, cls + 1, torch.zeros_like(cls))
    w = weight.gather(1, cls)                                          # (B, R)
    nll = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")
    return (w.flatten() * nll).mean()


def spatial_regulariser(features: torch.Tensor, region: torch.Tensor, present: torch.Tensor,
                        overlaps: torch.Tensor) -> torch.Tensor:
    """WSDDN's spatial regulariser (Bilen & Vedaldi 2016, sec. 3.3): for each class present, the features of the
    regions overlapping its top-scoring region by IoU >= SPATIAL_IOU are pulled towards that region's, weighted
    by half its squared score, so that the score map is smooth around the object rather than peaked on a part.
    The squared distance is averaged over feature dimensions and over the neighbours; the mean is over the
    (image, class present) pairs."""
    score, top = region.max(1)                                            # (B, C)
    near = (overlaps[top] >= SPATIAL_IOU).float()                         # (B, C, R), the top region included
    top_features = features.gather(1, top[..., None].expand(-1, -1, features.shape[2]))     # (B, C, D)
    distance = torch.cdist(top_features, features).square() / features.shape[2]            # (B, C, R)
    per_pair = (near * distance).sum(2) / near.sum(2) * 0.5 * score.detach().square()
    return (per_pair * present).sum() / present.sum().clamp(min=1)


# ---- training -----------------------------------------------------------------------------------------

def as_dataset(box: BoxData) -> data.Dataset:
    """A classification-shaped view of data with boxes, for what builds a model for images (make_model,
    input_of): its images, no labels, its classes."""
    source, _, split = box.spec.rpartition(":")
    return data.Dataset(source, split, box.images, torch.full((len(box),), -1, dtype=torch.int64), box.classes)


def noise_of(noise_opts: NoiseOptions, box: BoxData) -> augment.Noise:
    """Random crop and flip, which leave image labels as they are (flip only where the classes survive it)."""
    made = box.record.get("scenes") or {}
    source = str(made.get("source", "coco"))
    hflip = source.partition(":")[0] in data.HFLIP_OK or box.spec.startswith("coco:")
    return augment.Noise(crop_pad=max(1, box.shape[1] // 8) if noise_opts.crop else 0,
                         hflip=noise_opts.flip and hflip, randaugment=noise_opts.randaugment)


def train_wsddn(train_data: BoxData, model_opts: ModelOptions, noise_opts: NoiseOptions, opts: WsddnOptions,
                cfg: TrainConfig, rt: Runtime, test: BoxData | None = None, on_progress: Progress | None = None,
                resume: ResumeSpec | None = None) -> Trained:
    """Train on the image-level labels of `train_data` (its boxes are never read); once trained, CorLoc on the
    training images and mAP on `test` go into the checkpoint's metrics."""
    targets = train_data.image_labels()
    if len(train_data) < 2 or not bool((targets.sum(0) > 0).any()):
        raise DplError(f"{train_data.spec}: {len(train_data)} images: WSDDN needs at least 2 images with labels")
    batch = min(cfg.batch_size, len(train_data))
    seed_everything(cfg.seed)
    ds = as_dataset(train_data)
    backbone, spec, parents = make_model(model_opts, ds)
    c, size, _ = train_data.shape
    net = rt.prepare(Wsddn(backbone, len(train_data.classes), c, size, opts))
    input_meta = input_of_boxes(train_data)
    noise = noise_of(noise_opts, train_data)
    feed = rt.place(train_data.images)
    y = targets.to(rt.device)
    mean, std = input_meta["mean"], input_meta["std"]

    def objective(b):
        idx, x = b
        cls, det, refined, features = net(augment.to_input(augment.apply(x, noise), mean, std, rt.cuda), features=True)
        region, image, _ = scores_of(cls, det)
        target = y[idx]
        terms = {"bce": F.binary_cross_entropy(image, target)}
        if opts.spatial:
            terms["spatial"] = opts.spatial * spatial_regulariser(features.float(), region, target, net.overlaps)
        previous = region
        for k, logits in enumerate(refined, 1):
            terms[f"refine{k}"] = refinement_loss(logits, previous, target, net.overlaps)
            previous = logits.float().softmax(2)[..., 1:]
        return terms, {"acc": ((image > 0.5).float() == target).float().mean()}

    history = fit(net, objective, feed.shuffled(batch, cfg.seed), steps_per_epoch(len(train_data), batch), cfg, rt,
                  on_progress, resume, batch_images=batch)
    last = history[-1]
    metrics = {"train_loss": last["loss"], "train_acc": last["acc"]}
    found = measure(net, train_data, test, input_meta, rt)
    metrics.update({k: v for k, v in found.items() if isinstance(v, float)},
                   **({"test_spec": test.spec} if test is not None else {}))
    record = {**asdict(opts), "proposals": len(net.proposals), "feature_layer": net.layer, "spatial_scale": net.scale,
              "test": None if test is None else {"spec": test.spec, "n": len(test)}}
    meta = checkpoint_meta(spec, ds, parents, cfg, train_record(cfg, batch, noise), metrics, history, wsddn=record)
    meta.update(task=TASK, input=input_meta, data=train_data.record)
    return Trained(net.cpu(), meta, history)


def input_of_boxes(box: BoxData) -> dict:
    mean, std = image_files.normalization(box.images)
    return artifacts.input_meta(box.shape[0], box.shape[1], mean, std)


# ---- read-out and measures ----------------------------------------------------------------------------

@torch.no_grad()
def predict(net: Wsddn, box: BoxData, input_meta: dict, rt: Runtime, batch_size: int = 64
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(region scores x (N, R, C), image scores y (N, C), classification stream s^cls (N, R, C), read-out
    (N, R, C): the refinement streams' mean where there are any, else x) in eval mode, on the CPU."""
    net.eval()
    out: list[list[torch.Tensor]] = [[], [], [], []]
    for start in range(0, len(box), batch_size):
        x = box.images[start: start + batch_size].to(rt.device)
        with rt.autocast():
            cls, det, refined = net(augment.to_input(x, input_meta["mean"], input_meta["std"], rt.cuda))
        region, image, s_cls = scores_of(cls, det)
        readout = refined_scores(refined)
        for kept, t in zip(out, (region, image, s_cls, region if readout is None else readout)):
            kept.append(t.cpu())
    return tuple(torch.cat(t) for t in out)


def voted(scores: torch.Tensor, proposals: torch.Tensor, image: torch.Tensor, label: torch.Tensor,
          at: torch.Tensor, vote: float) -> torch.Tensor:
    """Box voting: each chosen proposal `at` (M,) of class `label` in image `image` becomes the mean of the
    proposals overlapping it by IoU >= `vote`, weighted by their scores (N, R, C) of that class. The fixed grid's
    step (8 px on 64 px images) leaves many objects without a proposal at IoU 0.5; the vote places the box
    between grid positions. vote 1: the chosen proposals as they are."""
    if vote >= 1 or not len(at):
        return proposals[at].float()
    near = box_iou(proposals[at], proposals) >= vote                           # (M, R), the chosen one included
    weight = scores[image, :, label].float().clamp(min=0) * near               # (M, R)
    weight[weight.sum(1) <= 0, :] = near[weight.sum(1) <= 0].float()           # all scores 0: an even vote
    return (weight @ proposals.float()) / weight.sum(1, keepdim=True)


def top_boxes(scores: torch.Tensor, proposals: torch.Tensor, classes: torch.Tensor | None = None,
              box_scores: torch.Tensor | None = None, vote: float = 1.0) -> Boxes:
    """Per image, the proposal of largest score for each class (every class, or those where `classes` (N, C)
    is true), scored by `box_scores` (N, C) where given, else by that region's score; with `vote` < 1, each
    box voted (`voted`)."""
    n, _, c = scores.shape
    best, at = scores.max(1)                                     # (N, C)
    keep = torch.ones(n, c, dtype=torch.bool) if classes is None else classes.bool()
    image, label = keep.nonzero(as_tuple=True)
    shown = (box_scores if box_scores is not None else best)[image, label]
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), keep.sum(1).cumsum(0)])
    return Boxes(offsets, voted(scores, proposals, image, label, at[image, label], vote), label, shown.float())


def detections(scores: torch.Tensor, proposals: torch.Tensor, per_class: int = DETECTIONS_PER_CLASS,
               nms_iou: float = NMS_IOU, vote: float = 1.0) -> Boxes:
    """Per image: each class's proposals ranked by `scores` (N, R, C), per-class NMS, the best `per_class` kept;
    with `vote` < 1, each kept box voted (`voted`)."""
    from torchvision.ops import batched_nms

    n, r, c = scores.shape
    k = min(r, max(per_class * 4, 32))              # NMS on each class's best few is enough to keep `per_class`
    top, at = scores.topk(k, dim=1)                  # (N, k, C)
    labels = torch.arange(c).repeat(k)
    dicts = []
    for i in range(n):
        s, boxes = top[i].flatten(), proposals[at[i].flatten()]
        kept = batched_nms(boxes, s, labels, nms_iou)
        kept = torch.cat([kept[labels[kept] == cl][:per_class] for cl in range(c)])
        chosen = at[i].flatten()[kept]
        boxes = voted(scores[i: i + 1], proposals, torch.zeros_like(chosen), labels[kept], chosen, vote)
        dicts.append({"boxes": boxes, "labels": labels[kept], "scores": s[kept]})
    return Boxes.from_dicts(dicts, scores=True)


def whole_image(image_scores: torch.Tensor, side: tuple[int, int]) -> Boxes:
    """The whole-image baseline: one box, the image, for every class, scored by the image score."""
    n, c = image_scores.shape
    h, w = side
    return Boxes(torch.arange(0, n * c + 1, c, dtype=torch.int64), torch.tensor([[0.0, 0.0, w, h]]).repeat(n * c, 1),
                 torch.arange(c).repeat(n), image_scores.flatten().float())


def measure(net: Wsddn, train_data: BoxData | None, test: BoxData | None, input_meta: dict, rt: Runtime,
            batch_size: int = 64) -> dict:
    """CorLoc on `train_data` (the top box of each class present) and mAP (COCO, pycocotools) on `test`, for
    WSDDN and the two baselines of the module docstring: whole_image_*, objectness_*."""
    found: dict = {}
    proposals, vote = net.proposals.cpu(), net.vote
    refined = len(net.refine) > 0
    if train_data is not None:
        x, y, s_cls, readout = predict(net, train_data, input_meta, rt, batch_size)
        found.update(corloc=corloc(top_boxes(readout, proposals, vote=vote), train_data.truth),
                     whole_image_corloc=corloc(whole_image(y, train_data.shape[1:]), train_data.truth),
                     objectness_corloc=corloc(top_boxes(s_cls, proposals, vote=vote), train_data.truth),
                     **({"two_stream_corloc": corloc(top_boxes(x, proposals, vote=vote), train_data.truth)}
                        if refined else {}),
                     **({"proposal_corloc": corloc(top_boxes(readout, proposals), train_data.truth),
                         "objectness_proposal_corloc": corloc(top_boxes(s_cls, proposals), train_data.truth)}
                        if vote < 1 else {}),
                     corloc_images=len(train_data), corloc_spec=train_data.spec)
    if test is not None:
        x, y, s_cls, readout = predict(net, test, input_meta, rt, batch_size)
        for name, pred in (("", detections(readout, proposals, vote=vote)),
                           ("whole_image_", whole_image(y, test.shape[1:])),
                           ("objectness_", detections(s_cls, proposals, vote=vote)),
                           *((("two_stream_", detections(x, proposals, vote=vote)),) if refined else ())):
            m = mean_average_precision(pred, test.truth, test.classes)
            found.update({f"{name}map50": m["map50"], f"{name}map": m["map"]})
            if not name:
                found["per_class50"] = m["per_class50"]
        found.update(map_images=len(test), map_spec=test.spec)
    return found


# ---- checkpoints -------------------------------------------------------------------------------------------

def is_wsddn(path: Path) -> bool:
    """Whether a file is a WSDDN checkpoint (False for anything unreadable: its reader will say why)."""
    return artifacts.checkpoint_task(path) == TASK


def options_of(meta: dict, path: Path) -> WsddnOptions:
    record = meta.get("wsddn")
    try:
        return WsddnOptions(**{k: record[k] for k in ("proposal_sizes", "proposal_ratios", "proposal_stride", "roi",
                                                       "hidden")}, refine=record.get("refine", 0),
                            feature_layer=record.get("feature_layer"), context=record.get("context", 0.0),
                            spatial=record.get("spatial", 0.0), vote=record.get("vote", 1.0))
    except (KeyError, TypeError, DplError):
        raise DplError(f"{path}: corrupt or missing metadata value for 'wsddn'") from None


def load_model(path: Path) -> tuple[Wsddn, artifacts.Checkpoint]:
    """A WSDDN checkpoint's network, its tensors checked against the network its metadata describes."""
    ckpt = artifacts.load_checkpoint(path, task=TASK)
    opts = options_of(ckpt.meta, path)
    c, size = ckpt.input["channels"], ckpt.input["size"]

    def build() -> Wsddn:
        try:
            return Wsddn(models.build(ckpt.arch), ckpt.num_classes, c, size, opts)
        except (DplError, TypeError) as e:
            raise DplError(f"{path}: {e}") from None

    net = build()
    artifacts.load_state(net, ckpt.tensors, path)
    return net, ckpt


def data_of(meta: dict, data_spec: str | None, split: str, download: bool = False) -> BoxData | None:
    """The data a WSDDN checkpoint is measured or labels on: `data_spec` (scenes with the recorded scene spec), else
    its own data's `split` rebuilt from the record (None where its data has no such split)."""
    record = meta.get("data", {})
    spec = data_spec or str(record.get("spec", "")).rpartition(":")[0]
    scene = scene_spec_of(record)
    size, channels = meta["input"]["size"], meta["input"]["channels"]
    if data_spec is None:
        try:
            found = load_boxes(spec, split, scene, resize=size, download=download)
        except DplError:
            if split == "train":
                raise
            return None
    else:
        found = load_boxes(spec, split, scene, resize=size, download=download)
    if found.shape != (channels, size, size):
        raise DplError(f"the model takes {channels}x{size}x{size} images, {found.spec} has "
                       f"{'x'.join(map(str, found.shape))}")
    if found.classes != meta.get("classes"):
        raise DplError(f"the model predicts {len(meta.get('classes', []))} classes ({', '.join(meta.get('classes', [])[:5])}"
                       f", ...), {found.spec} has {len(found.classes)} ({', '.join(found.classes[:5])}, ...)")
    return found


def evaluate_checkpoint(path: Path, data_spec: str | None, rt: Runtime, batch_size: int = 64,
                        download: bool = False) -> dict:
    """`dpl eval` of a WSDDN checkpoint: CorLoc on its training images and mAP on its test images (or both on
    `data_spec`), beside the two baselines."""
    net, ckpt = load_model(path)
    train_data = data_of(ckpt.meta, data_spec, "train", download)
    test = train_data if data_spec else data_of(ckpt.meta, None, "test", download)
    net = rt.prepare(net)
    found = measure(net, train_data, test, ckpt.input, rt, batch_size)
    return {"checkpoint": str(path), "task": TASK, "arch": ckpt.arch.get("name"), "params": models.count_params(net),
            "proposals": len(net.proposals), "vote": net.vote, "seed": ckpt.meta.get("seed"), **found}


# ---- pseudo-boxes -------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class BoxLabelOptions:
    present: float = 0.5           # a class is predicted present where its image score y_c reaches this
    shard_size: int = 50_000
    batch_size: int = 64

    def __post_init__(self):
        if not 0 < self.present < 1:
            raise DplError(f"--present must be in (0, 1), got {self.present}")
        if self.shard_size < 1 or self.batch_size < 1:
            raise DplError("--shard-size and --batch-size must be at least 1")


def pseudo_boxes(net: Wsddn, box: BoxData, input_meta: dict, rt: Runtime, opts: BoxLabelOptions) -> Boxes:
    """Per image, the top box of each class predicted present (y_c >= opts.present), scored by y_c."""
    _, y, _, readout = predict(net, box, input_meta, rt, opts.batch_size)
    return top_boxes(readout, net.proposals.cpu(), classes=y >= opts.present, box_scores=y, vote=net.vote)


def label_boxes(path: Path, box: BoxData, rt: Runtime, opts: BoxLabelOptions, out: Path) -> dict:
    """Write the pseudo-boxes of `box` by the checkpoint at `path` into the box label folder `out`; with its
    quality (precision and recall at IoU 0.5 per score threshold, boxes.precision_recall) against the ground
    truth in the folder's metadata (`box_quality`)."""
    net, ckpt = load_model(path)
    net = rt.prepare(net)
    pred = pseudo_boxes(net, box, ckpt.input, rt, opts)
    quality = precision_recall(pred, box.truth, 0.5) if len(box.truth.labels) else None
    meta = {"teachers": [{"role": "teacher", "path": str(path), "sha256": ckpt.sha256()}], "data": box.record,
            "classes": box.classes, "num_classes": len(box.classes), "image_size": list(box.shape[1:]),
            "total": len(box), "world": 1, "task": TASK, "present": opts.present, "box_quality": quality}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for seq, start in enumerate(range(0, len(box), opts.shard_size)):
        index = torch.arange(start, min(start + opts.shard_size, len(box)))
        written.append(write_box_shard(out, meta, 0, seq, -(-len(box) // opts.shard_size), index, pred.subset(index)))
    return {"folder": str(out), "images": len(box), "boxes": len(pred.labels), "shards": len(written),
            "quality": quality, "data": box.spec}
