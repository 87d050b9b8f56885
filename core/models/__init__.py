"""The architecture registry.

Every model is built from a plain dict of JSON values (`arch` in a checkpoint's metadata):
name, num_classes, in_channels, image_size, dropout, stochastic_depth. Dropout sits before the
classifier; stochastic depth drops residual branches with a probability rising linearly from the first
block to `stochastic_depth` at the last, as in Noisy Student. Layers are reached by module path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from .. import DplError


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a shortcut (1x1 conv + bn when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(self.shortcut(x) + self.drop_path(out))


class WideBlock(nn.Module):
    """The pre-activation block of Wide ResNets (Zagoruyko & Komodakis)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv3x3(cout, cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x):
        o = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(o))))
        return (x if self.shortcut is None else self.shortcut(o)) + self.drop_path(out)


def _drop_rates(n: int, final: float) -> list[float]:
    return [final * (i + 1) / n for i in range(n)]


class Classifier(nn.Module):
    """Dropout, then the linear classifier. The input of `fc` is the feature vector."""

    def __init__(self, width: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.dropout(x))


class ResNet(nn.Module):
    """Stem conv, stages of BasicBlocks (the first at stride 1, the rest at stride 2), pool, classifier.

    Covers the small `cnn-*` nets (which pool after the stem on images of 24 px and more) and the
    CIFAR ResNets of the distillation literature (resnet20, resnet32x4, ...).
    """

    def __init__(self, stem: int, widths: tuple[int, ...], blocks: int, *, num_classes: int,
                 in_channels: int, image_size: int, dropout: float, stochastic_depth: float,
                 stem_pool: bool = False):
        super().__init__()
        layers = [conv3x3(in_channels, stem), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        if stem_pool and image_size >= 24:
            layers.append(nn.MaxPool2d(2))
        self.stem = nn.Sequential(*layers)
        rates = iter(_drop_rates(len(widths) * blocks, stochastic_depth))
        stages, cin = [], stem
        for s, width in enumerate(widths):
            stage = []
            for b in range(blocks):
                stride = 2 if s > 0 and b == 0 else 1
                stage.append(BasicBlock(cin, width, stride, next(rates)))
                cin = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = Classifier(cin, num_classes, dropout)

    def forward(self, x):
        return self.head(self.pool(self.stages(self.stem(x))))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, *, num_classes: int, in_channels: int, image_size: int,
                 dropout: float, stochastic_depth: float):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = conv3x3(in_channels, 16)
        rates = iter(_drop_rates(3 * n, stochastic_depth))
        stages, cin = [], 16
        for s, width in enumerate(widths):
            stage = []
            for b in range(n):
                stage.append(WideBlock(cin, width, 2 if s > 0 and b == 0 else 1, next(rates)))
                cin = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = Classifier(cin, num_classes, dropout)

    def forward(self, x):
        return self.head(self.pool(self.stages(self.stem(x))))


class PlainNet(nn.Module):
    """A deep, thin plain conv net (no shortcuts), the kind of student FitNets trains with hints.

    `depth` conv-bn-relu layers split over three stages of widths (width, 2*width, 2*width), max-pooled
    between stages; `stochastic_depth` has no residual branch to act on and must be 0. `bn=0` drops the
    batch norms (convolutions get biases), as in the 2015 paper, whose deep students were hard to train
    from labels alone for want of them.
    """

    def __init__(self, depth: int = 11, width: int = 12, bn: int = 1, *, num_classes: int, in_channels: int,
                 image_size: int, dropout: float, stochastic_depth: float):
        super().__init__()
        if stochastic_depth:
            raise DplError("fitnet-thin has no residual blocks for stochastic depth; use --stochastic-depth 0")
        if not (3 <= depth <= 1000 and 1 <= width <= 4096):
            raise DplError(f"fitnet-thin needs depth in 3..1000 and width in 1..4096, got depth={depth}, width={width}")
        if bn not in (0, 1):
            raise DplError(f"fitnet-thin takes bn=0 or bn=1, got bn={bn}")
        per_stage = [depth // 3 + (1 if s < depth % 3 else 0) for s in range(3)]
        layers, cin = [], in_channels
        for s, (n, w) in enumerate(zip(per_stage, (width, 2 * width, 2 * width))):
            stage = []
            for _ in range(n):
                if bn:
                    stage += [conv3x3(cin, w), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                else:
                    conv = nn.Conv2d(cin, w, 3, padding=1)
                    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")   # He init: no norm to rescale
                    nn.init.zeros_(conv.bias)
                    stage += [conv, nn.ReLU(inplace=True)]
                cin = w
            if s < 2 and image_size >= 8 * 2 ** s:
                stage.append(nn.MaxPool2d(2))
            layers.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = Classifier(cin, num_classes, dropout)

    def forward(self, x):
        return self.head(self.pool(self.stages(x)))


# ---- torchvision classifiers ----------------------------------------------------------------------

class _DropPathBasic(nn.Module):
    """Forward of torchvision's BasicBlock with the residual branch passed through stochastic depth."""

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(identity + self.drop_path(out))


class _DropPathBottleneck(nn.Module):
    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(identity + self.drop_path(out))


def _replace_conv(conv: nn.Conv2d, in_channels: int, **overrides) -> nn.Conv2d:
    kw = dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding, bias=conv.bias is not None)
    kw.update(overrides)
    return nn.Conv2d(in_channels, conv.out_channels, **kw)


def _torchvision_resnet(name: str, *, num_classes, in_channels, image_size, dropout, stochastic_depth):
    import torchvision.models as tvm
    from torchvision.models.resnet import BasicBlock as TvBasic

    model = getattr(tvm, name)(num_classes=num_classes)
    if image_size <= 64:    # small images: 3x3 stem at stride 1 and no max-pool, as for CIFAR
        model.conv1 = _replace_conv(model.conv1, in_channels, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _replace_conv(model.conv1, in_channels)
    model.fc = Classifier(model.fc.in_features, num_classes, dropout)
    blocks = [m for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for m in layer]
    for block, rate in zip(blocks, _drop_rates(len(blocks), stochastic_depth)):
        block.drop_path = StochasticDepth(rate, "row")
        mixin = _DropPathBasic if isinstance(block, TvBasic) else _DropPathBottleneck
        block.__class__ = type(f"DropPath{type(block).__name__}", (mixin, type(block)), {})
    return model


def _torchvision_mobile(name: str, *, num_classes, in_channels, image_size, dropout, stochastic_depth):
    import torchvision.models as tvm

    kwargs = {"num_classes": num_classes}
    if name.startswith("efficientnet"):
        kwargs["stochastic_depth_prob"] = stochastic_depth
    elif stochastic_depth:
        raise DplError(f"{name} has no residual blocks with stochastic depth; use --stochastic-depth 0")
    model = getattr(tvm, name)(**kwargs)
    stem = model.features[0][0]
    if in_channels != stem.in_channels:
        model.features[0][0] = _replace_conv(stem, in_channels)
    for m in model.classifier:
        if isinstance(m, nn.Dropout):
            m.p = dropout
    return model


TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2", "resnext50_32x4d")
TORCHVISION_MOBILE = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                      "efficientnet_b0", "efficientnet_b1", "efficientnet_b2")
PRETRAINED = TORCHVISION_RESNETS + TORCHVISION_MOBILE     # the archs torchvision has ImageNet weights for


@dataclass(frozen=True)
class Pretrained:
    url: str
    file: Path              # the torch hub cache file the weights were read from
    loaded: list[str]       # state-dict keys taken from the weights
    fresh: list[str]        # state-dict keys left as built


def pretrained_file(name: str) -> tuple[str, Path]:
    """URL of torchvision's default ImageNet weights for `name` and the torch hub cache file for it."""
    if name not in PRETRAINED:
        raise DplError(f"no pretrained weights for {name}; --pretrained takes {', '.join(PRETRAINED)}")
    from torchvision.models import get_model_weights

    url = get_model_weights(name).DEFAULT.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def load_pretrained(model: nn.Module, name: str) -> Pretrained:
    """Load torchvision's ImageNet weights for `name` into `model`, as the registry built it.

    The weights are read from the torch hub cache ($TORCH_HOME/hub/checkpoints), downloaded only when the
    file is not there. Every tensor whose shape matches is loaded; the rest start fresh: the classifier
    for a class count other than 1000, and the 3x3 stem that replaces resnets' 7x7 conv on images of 64 px
    or less. The first conv of an input with other than 3 channels gets the RGB kernel adapted (timm's
    adapt_input_conv): summed over RGB for one channel, else repeated and scaled by 3 / channels.
    """
    url, file = pretrained_file(name)
    state = _read_pretrained(url, file)
    if isinstance(getattr(model, "fc", None), Classifier):     # the resnets' fc sits inside a Classifier
        state = {(f"fc.{k}" if k.startswith("fc.") else k): v for k, v in state.items()}
    own = model.state_dict()
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
    if first in state:
        state[first] = _adapt_input_conv(state[first], own[first].shape[1])
    loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    if not loaded:
        raise DplError(f"{file}: no tensor fits {name}; replace it with {url}")
    model.load_state_dict({**own, **{k: state[k] for k in loaded}})
    return Pretrained(url, file, loaded, [k for k in own if k not in set(loaded)])


def _read_pretrained(url: str, file: Path) -> dict[str, torch.Tensor]:
    """torchvision's state dict from the hub cache, downloaded first when absent; tensors only."""
    if not file.is_file():     # downloaded here, not by torch.hub, which announces it on stdout
        digest = torch.hub.HASH_REGEX.search(file.name)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(file), digest and digest.group(1), progress=False)
        except (OSError, RuntimeError) as e:    # no network (URLError), or the hash of what came differs
            raise DplError(f"cannot download {url} ({_first_line(e)}); place that file at {file}") from None
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except Exception as e:     # torch.load(weights_only=True) refuses a foreign object with an UnpicklingError
        raise DplError(f"{file}: unreadable weights ({_first_line(e)}); replace it with {url}") from None
    if not isinstance(state, dict):
        raise DplError(f"{file}: not a state dict; replace it with {url}")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    if weight.ndim != 4 or weight.shape[1] != 3 or in_channels == 3:
        return weight
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    repeat = -(-in_channels // 3)
    return weight.repeat(1, repeat, 1, 1)[:, :in_channels] * (3 / in_channels)


def _family(builder: Callable, *args, **fixed) -> Callable[..., nn.Module]:
    return lambda **kw: builder(*args, **fixed, **kw)


REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "cnn-s": _family(ResNet, 16, (16, 32, 64), 1, stem_pool=True),
    "cnn-m": _family(ResNet, 32, (32, 64, 128), 1, stem_pool=True),
    "cnn-l": _family(ResNet, 64, (64, 128, 256), 2, stem_pool=True),
    **{f"resnet{d}": _family(ResNet, 16, (16, 32, 64), (d - 2) // 6) for d in (8, 14, 20, 32, 44, 56, 110)},
    **{f"resnet{d}x4": _family(ResNet, 32, (64, 128, 256), (d - 2) // 6) for d in (8, 32)},
    "fitnet-thin": PlainNet,
    **{f"wrn-{d}-{k}": _family(WideResNet, d, k) for d in (16, 28, 40) for k in (1, 2, 4, 10) if not (d == 28 and k < 10)},
    **{n: _family(_torchvision_resnet, n) for n in TORCHVISION_RESNETS},
    **{n: _family(_torchvision_mobile, n) for n in TORCHVISION_MOBILE},
}


# ---- detectors: torchvision's Faster R-CNN, RetinaNet and FCOS on a registry backbone (`FAMILY-BACKBONE`) ----------

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


def load_pretrained_backbone(model: nn.Module, name: str) -> Pretrained:
    """torchvision's ImageNet weights for a detector's backbone (`frcnn-resnet18` -> resnet18's), by `load_pretrained`;
    the heads stay as built. Keys are the detector's (`backbone.layer1.0.conv1.weight`)."""
    backbone = name.partition("-")[2]
    if backbone not in PRETRAINED:
        raise DplError(f"no pretrained weights for {name}'s backbone {backbone}; --pretrained takes a detector on "
                       f"{', '.join(PRETRAINED)} (e.g. frcnn-resnet18)")
    weights = load_pretrained(model.backbone, backbone)
    loaded = [f"backbone.{k}" for k in weights.loaded]
    return Pretrained(weights.url, weights.file, loaded, [k for k in model.state_dict() if k not in set(loaded)])


_DETECTOR_BUILDERS = {"frcnn": _faster_rcnn, "retinanet": _retinanet, "fcos": _fcos}
REGISTRY.update({f"{family}-{b}": _family(builder, b)
                 for family, builder in _DETECTOR_BUILDERS.items() for b in DETECTOR_BACKBONES})


def parse_arch(text: str) -> tuple[str, dict]:
    """`NAME[:key=value,...]`, e.g. `fitnet-thin:depth=17,width=8`, -> (name, {key: number})."""
    name, _, rest = text.partition(":")
    if name not in REGISTRY:
        raise DplError(f"unknown architecture {name!r}; valid: {', '.join(REGISTRY)}")
    extra = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        try:
            extra[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise DplError(f"architecture option {item!r} is not key=number") from None
        if not eq or not key.strip():
            raise DplError(f"architecture option {item!r} is not key=number")
    return name, extra


def arch_spec(arch: str, *, num_classes: int, in_channels: int, image_size: int,
              dropout: float = 0.0, stochastic_depth: float = 0.0) -> dict:
    """The JSON description from which `build` makes the model, as stored in checkpoints."""
    name, extra = parse_arch(arch)
    for opt, value in (("--dropout", dropout), ("--stochastic-depth", stochastic_depth)):
        if not 0.0 <= value < 1.0:
            raise DplError(f"{opt} must be in [0, 1), got {value}")
    return {"name": name, **extra, "num_classes": num_classes, "in_channels": in_channels,
            "image_size": image_size, "dropout": dropout, "stochastic_depth": stochastic_depth}


def build(spec: dict) -> nn.Module:
    spec = dict(spec)
    name = spec.pop("name", None)
    if not isinstance(name, str) or name not in REGISTRY:
        raise DplError(f"unknown architecture {name!r}; valid: {', '.join(REGISTRY)}")
    for key, value in spec.items():     # a checkpoint's arch is untrusted input: numbers, within reason
        if not key.isidentifier() or type(value) not in (int, float) or not abs(value) <= 2**24:
            raise DplError(f"architecture {name}: option {key!r}={value!r} is not a number in range")
    try:
        return REGISTRY[name](**spec)
    except DplError:
        raise
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise DplError(f"architecture {name} does not take {str(e).split('argument')[-1].strip()}") from None
        raise DplError(f"architecture {name} cannot be built from {spec} ({_first_line(e)})") from None
    except (ValueError, RuntimeError, OverflowError) as e:
        raise DplError(f"architecture {name} cannot be built from {spec} ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def feature_layer(model: nn.Module) -> str:
    """Path of the final linear classifier, whose input is the model's feature vector."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1]


def get_layer(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise DplError(f"no layer {path!r}; valid paths include: {', '.join(names[:40])}"
                       f"{' ...' if len(names) > 40 else ''} (dpl info --layers lists them all)") from None


FEATURES = "features"            # a tap's name for the input of the final Linear: the backbone's feature vector


class _Reached(Exception):
    pass


class Taps:
    """Forward hooks that capture layer outputs by module path; FEATURES captures the input of the model's
    final Linear. The one way dpl reaches inside a model: hints, probes, pretext tasks, `info --layers`.

    `taps(x)` runs the model and returns {path: output}, in the order the layers ran (a layer that runs twice
    keeps its last output). With `stop=True` the forward pass stops as soon as every tapped layer has run, so
    nothing past them is computed. Use as a context manager, or call remove(), to take the hooks off.
    """

    def __init__(self, model: nn.Module, paths, stop: bool = False):
        self.model, self.paths, self.stop = model, list(dict.fromkeys(paths)), stop
        self.captured: dict[str, object] = {}
        self.handles = []
        for path in self.paths:
            if path == FEATURES:
                layer = get_layer(model, feature_layer(model))
                self.handles.append(layer.register_forward_pre_hook(
                    lambda m, args: self._capture(FEATURES, args[0])))
            else:
                self.handles.append(get_layer(model, path).register_forward_hook(
                    lambda m, args, out, path=path: self._capture(path, out)))

    def _capture(self, path: str, out) -> None:
        self.captured[path] = out
        if self.stop and len(self.captured) == len(self.paths):
            raise _Reached

    def __call__(self, x: torch.Tensor) -> dict[str, object]:
        self.captured = {}
        try:
            self.model(x)
        except _Reached:
            pass
        captured, self.captured = self.captured, {}
        return captured

    def tensor(self, x: torch.Tensor, path: str) -> torch.Tensor:
        """One tapped layer's output, which must be a tensor."""
        out = self(x).get(path)
        if not isinstance(out, torch.Tensor):
            raise DplError(f"layer {path!r} does not output a tensor (it gives {type(out).__name__})")
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> Taps:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def output_shape(taps: Taps, path: str, input_shape) -> tuple[int, ...]:
    """The output shape (less the batch) of a tapped layer for one input of `input_shape`, in eval mode."""
    was_training = taps.model.training
    taps.model.eval()
    try:
        with torch.no_grad():
            device = next(taps.model.parameters()).device
            return tuple(taps.tensor(torch.zeros(1, *input_shape, device=device), path).shape[1:])
    finally:
        taps.model.train(was_training)


def list_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[dict]:
    """Every named module in execution order with its output shape for one input of `input_shape`."""
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    try:
        with Taps(model, [name for name in modules if name]) as taps, torch.inference_mode():
            captured = taps(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
    return [{"path": name, "type": type(modules[name]).__name__,
             "shape": list(out.shape[1:]) if isinstance(out, torch.Tensor) else None,
             "params": sum(p.numel() for p in modules[name].parameters(recurse=False))}
            for name, out in captured.items()]


BLOCK_TYPES = ("BasicBlock", "WideBlock", "Bottleneck", "InvertedResidual", "MBConv")


def block_layers(model: nn.Module, input_shape) -> list[dict]:
    """The `list_layers` rows of the residual blocks (in a plain net, the ReLUs; else every layer) with a
    feature-map output, in execution order."""
    rows = [r for r in list_layers(model, input_shape) if r["shape"] and len(r["shape"]) == 3]
    return [r for r in rows if r["type"].endswith(BLOCK_TYPES)] or [r for r in rows if r["type"] == "ReLU"] or rows


def middle_layer(model: nn.Module, input_shape) -> str:
    """The middle residual block (or, in a plain net, the middle ReLU) with a feature-map output."""
    blocks = block_layers(model, input_shape)
    return blocks[(len(blocks) - 1) // 2]["path"]


def make_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """Conv regressor whose kernel makes the spatial sizes match (as in the paper); linear for vectors."""
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        (cs, hs, ws), (ct, ht, wt) = student_shape, teacher_shape
        if hs >= ht and ws >= wt:
            return nn.Conv2d(cs, ct, kernel_size=(hs - ht + 1, ws - wt + 1))
        if hs <= ht and ws <= wt:
            return nn.ConvTranspose2d(cs, ct, kernel_size=(ht - hs + 1, wt - ws + 1))
        raise DplError(f"guided layer output {student_shape} and hint {teacher_shape} differ in aspect; "
                       "pick layers whose feature maps both shrink or both grow")
    if len(student_shape) == 1 and len(teacher_shape) == 1:
        return nn.Linear(student_shape[0], teacher_shape[0])
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(student_shape), math.prod(teacher_shape)),
                         nn.Unflatten(1, teacher_shape))
