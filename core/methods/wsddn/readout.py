"""WSDDN read out: predictions, the top box of each class and the detections (voted), the whole-image and
objectness baselines, CorLoc and mAP (`measure`); loading a checkpoint, `dpl eval` of one, and pseudo-boxes
(`label_boxes`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.ops import box_iou

from ... import DplError, artifacts, models
from ...data import augment
from ...data.boxes import Boxes, corloc, mean_average_precision, precision_recall, write_box_shard
from ...data.scenes import BoxData, load_boxes, scene_spec_of
from ...engine.train import Runtime
from .network import TASK, Wsddn, WsddnOptions, refined_scores, scores_of

NMS_IOU = 0.4                 # per-class NMS of the read-out detections (WSDDN's test-time setting)
DETECTIONS_PER_CLASS = 10     # kept per class and image after NMS (at most 100 per image for COCOeval's maxDets)


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
        x, y, s_cls, readout = train_predicted = predict(net, train_data, input_meta, rt, batch_size)
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
        # the same images (validation, eval --data): their prediction is the one made for CorLoc
        x, y, s_cls, readout = (train_predicted if test is train_data
                                else predict(net, test, input_meta, rt, batch_size))
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
