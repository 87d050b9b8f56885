"""Detectors: torchvision's Faster R-CNN, RetinaNet and FCOS on a registry backbone (`FAMILY-BACKBONE`), on the
backbone's last feature map as one level; `_detector_body` cuts any registry backbone there and checks that the
anchors fit. Importing this module adds them to the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import DplError
from .registry import REGISTRY, entry
from .torchvision import TORCHVISION_MOBILE, TORCHVISION_RESNETS

DETECTOR = "frcnn-"         # the two-stage family (Chen et al.'s online distillation needs it)
DETECTOR_BACKBONES = ("cnn-s", "cnn-m", "cnn-l", "resnet8", "resnet14", "resnet20", "resnet32", "resnet8x4",
                      "resnet32x4", "fitnet-thin", *TORCHVISION_RESNETS, *TORCHVISION_MOBILE)


@dataclass(frozen=True)
class DetectorFamily:
    """What a detector family has, for the code that trains and distils any of them (core/detect.py)."""

    title: str
    terms: dict[str, str]       # torchvision's loss names -> dpl's loss terms (the metrics log's columns)
    two_stage: bool             # an RPN and RoI heads (`rpn`, `roi_heads`), which Chen et al.'s online terms read


DETECTOR_FAMILIES = {
    "frcnn": DetectorFamily("Faster R-CNN", {"loss_classifier": "cls", "loss_box_reg": "box",
                                             "loss_objectness": "rpn_obj", "loss_rpn_box_reg": "rpn_box"}, True),
    "retinanet": DetectorFamily("RetinaNet", {"classification": "cls", "bbox_regression": "box"}, False),
    "fcos": DetectorFamily("FCOS", {"classification": "cls", "bbox_regression": "box", "bbox_ctrness": "ctr"}, False),
}
DETECTOR_TERMS = {k: v for family in DETECTOR_FAMILIES.values() for k, v in family.terms.items()}
DETECTOR_NAMES = "|".join(DETECTOR_FAMILIES) + "-BACKBONE"


def detector_family(name: str) -> DetectorFamily | None:
    """The family of a detector arch name (`retinanet-cnn-s` -> RetinaNet); None for a classifier."""
    family, dash, _ = name.partition("-")
    return DETECTOR_FAMILIES.get(family) if dash else None


def is_detector(name: str) -> bool:
    return detector_family(name) is not None


class DetectorInput(nn.Module):
    """Stands in for torchvision's GeneralizedRCNNTransform: dpl normalizes the images itself and they all have
    one size, so nothing is resized (boxes stay in the stored image's pixels) or padded."""

    def forward(self, images, targets=None):
        from torchvision.models.detection.image_list import ImageList

        x = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
        return ImageList(x, [(x.shape[-2], x.shape[-1])] * len(x)), targets

    def postprocess(self, detections, image_sizes, original_sizes):
        """Drop what the one-stage heads let through and Faster R-CNN never outputs: their classifier's column for
        torchvision's class 0 (the background, never a target), and boxes clipped to nothing at the image's edge
        (under torchvision's 1e-2 px, which would be refused as pseudo-boxes to train on)."""
        def kept(d):
            b = d["boxes"]
            return (d["labels"] > 0) & (b[:, 2] - b[:, 0] >= 1e-2) & (b[:, 3] - b[:, 1] >= 1e-2)
        return [{k: v[kept(d)] for k, v in d.items()} for d in detections]


CLASSIFIER_PARTS = ("pool", "head", "avgpool", "fc", "classifier")     # what a backbone drops of its classifier


def _detector_body(name: str, backbone: str, *, in_channels, image_size, dropout, stochastic_depth,
                   anchor_min: float, anchor_max: float) -> tuple[nn.Module, float, float, float]:
    """The backbone's layers up to its last feature map (a detector's `backbone`, with `out_channels`), its stride,
    and the anchor range (default: an eighth to a half of the side), checked against that feature map."""
    from collections import OrderedDict

    if dropout:
        raise DplError("a detector has no dropout layer; use --dropout 0")
    net = REGISTRY[backbone](num_classes=1, in_channels=in_channels, image_size=image_size, dropout=0.0,
                             stochastic_depth=stochastic_depth)
    body = nn.Sequential(OrderedDict((n, m) for n, m in net.named_children() if n not in CLASSIFIER_PARTS))
    body.out_channels = [m for m in body.modules() if isinstance(m, nn.BatchNorm2d | nn.Conv2d)][-1].weight.shape[0]
    with torch.no_grad():
        side = body.eval()(torch.zeros(1, in_channels, image_size, image_size)).shape[-1]
    body.train()
    stride = image_size / side
    lo, hi = anchor_min or image_size / 8, anchor_max or image_size / 2
    if side < 2:
        raise DplError(f"{name} reduces {image_size}px images to a {side}x{side} feature map (stride {stride:g}); "
                       f"a detector needs at least 2x2: use --resize {2 * math.ceil(stride)} or more (or a larger "
                       "--canvas, or another backbone)")
    if not stride / 2 <= lo <= hi <= 2 * image_size:
        raise DplError(f"{name} on {image_size}px images (a {side}x{side} feature map, stride {stride:g}) "
                       f"cannot serve anchors of {lo:g} to {hi:g} px: objects must span at least half a feature cell "
                       "and at most twice the image (use a larger --canvas, --resize, or another backbone)")
    return body, stride, lo, hi


def _check_counts(**counts) -> None:
    bounds = {"proposals": 4096, "candidates": 4096, "roi": 32, "head": 8192, "detections": 1000}
    if not all(1 <= v <= bounds[k] for k, v in counts.items()):
        raise DplError("detector options need " + ", ".join(f"{k} in 1..{bounds[k]}" for k in counts))


def _faster_rcnn(backbone: str, *, num_classes, in_channels, image_size, dropout, stochastic_depth,
                 anchor_min: float = 0.0, anchor_max: float = 0.0, proposals: int = 64, roi: int = 4,
                 head: int = 256, detections: int = 30) -> nn.Module:
    """Faster R-CNN for small images: the backbone's last feature map (its pooling and classifier dropped), three
    anchor sizes from anchor_min to anchor_max pixels (default: an eighth to a half of the side) at ratios 1:2,
    1:1, 2:1, `proposals` RPN proposals, RoIAlign to roi x roi, a two-layer box head of width `head`.
    `num_classes` counts the object classes; torchvision's class 0 (background) comes on top."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    _check_counts(proposals=proposals, roi=roi, head=head, detections=detections)
    body, _, lo, hi = _detector_body(f"frcnn-{backbone}", backbone, in_channels=in_channels, image_size=image_size,
                                     dropout=dropout, stochastic_depth=stochastic_depth, anchor_min=anchor_min,
                                     anchor_max=anchor_max)
    sizes = (float(lo), float((lo * hi) ** 0.5), float(hi))
    model = FasterRCNN(
        body, num_classes=None, rpn_anchor_generator=AnchorGenerator((sizes,), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], roi, 2), box_head=TwoMLPHead(body.out_channels * roi * roi, head),
        box_predictor=FastRCNNPredictor(head, num_classes + 1),
        rpn_pre_nms_top_n_train=4 * proposals, rpn_pre_nms_top_n_test=4 * proposals,
        rpn_post_nms_top_n_train=proposals, rpn_post_nms_top_n_test=proposals, rpn_batch_size_per_image=64,
        box_batch_size_per_image=proposals, box_score_thresh=0.01, box_detections_per_img=detections)
    model.transform = DetectorInput()
    return model


def _retinanet(backbone: str, *, num_classes, in_channels, image_size, dropout, stochastic_depth,
               anchor_min: float = 0.0, anchor_max: float = 0.0, candidates: int = 256, detections: int = 30
               ) -> nn.Module:
    """RetinaNet for small images: one feature level (the backbone's last map, no FPN), the anchors of `_faster_rcnn`
    (three sizes from the data at three ratios), torchvision's four-conv heads (with GroupNorm, as its v2) at the
    backbone's width and focal loss; the `candidates` best-scoring anchors go to NMS. Its classifier has a column for
    torchvision's class 0, never a target, so that labels shift by one as for Faster R-CNN (DetectorInput drops a
    detection of it)."""
    from functools import partial

    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.retinanet import RetinaNetHead

    _check_counts(candidates=candidates, detections=detections)
    body, _, lo, hi = _detector_body(f"retinanet-{backbone}", backbone, in_channels=in_channels,
                                     image_size=image_size, dropout=dropout, stochastic_depth=stochastic_depth,
                                     anchor_min=anchor_min, anchor_max=anchor_max)
    sizes = (float(lo), float((lo * hi) ** 0.5), float(hi))
    anchors = AnchorGenerator((sizes,), ((0.5, 1.0, 2.0),))
    # GroupNorm in the heads, as torchvision's RetinaNet v2: without it the four convs, initialized at std 0.01,
    # pass a narrow backbone's signal on at a thousandth and the heads barely start learning from scratch.
    head = RetinaNetHead(body.out_channels, anchors.num_anchors_per_location()[0], num_classes + 1,
                         norm_layer=partial(nn.GroupNorm, math.gcd(32, body.out_channels)))
    model = RetinaNet(body, num_classes + 1, anchor_generator=anchors, head=head, score_thresh=0.01,
                      topk_candidates=candidates, detections_per_img=detections)
    model.transform = DetectorInput()
    return model


def _fcos(backbone: str, *, num_classes, in_channels, image_size, dropout, stochastic_depth,
          anchor_min: float = 0.0, anchor_max: float = 0.0, candidates: int = 256, detections: int = 30) -> nn.Module:
    """FCOS for small images: one feature level, anchor-free: each feature cell predicts a class, its distances to a
    box's sides (in cells) and a centre-ness, and is a positive for a box whose centre lies within 1.5 cells and
    which contains it. anchor_min/anchor_max (from the data) only check that the objects fit the grid. The heads'
    GroupNorm takes gcd(32, width) groups; class 0 as in `_retinanet`."""
    from functools import partial

    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead

    _check_counts(candidates=candidates, detections=detections)
    body, stride, _, _ = _detector_body(f"fcos-{backbone}", backbone, in_channels=in_channels, image_size=image_size,
                                        dropout=dropout, stochastic_depth=stochastic_depth, anchor_min=anchor_min,
                                        anchor_max=anchor_max)
    width, norm = body.out_channels, partial(nn.GroupNorm, math.gcd(32, body.out_channels))
    head = FCOSHead(width, 1, num_classes + 1, num_convs=0)     # its box coder; the heads, with that norm, next
    head.classification_head = FCOSClassificationHead(width, 1, num_classes + 1, norm_layer=norm)
    head.regression_head = FCOSRegressionHead(width, 1, norm_layer=norm)
    model = FCOS(body, num_classes + 1, anchor_generator=AnchorGenerator(((float(stride),),), ((1.0,),)), head=head,
                 score_thresh=0.01, topk_candidates=candidates, detections_per_img=detections)
    model.transform = DetectorInput()
    return model


_DETECTOR_BUILDERS = {"frcnn": _faster_rcnn, "retinanet": _retinanet, "fcos": _fcos}
REGISTRY.update({f"{family}-{b}": entry(builder, b)
                 for family, builder in _DETECTOR_BUILDERS.items() for b in DETECTOR_BACKBONES})
