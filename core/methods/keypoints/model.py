"""The keypoint network: a registry backbone's feature map (read by `models.Taps`) and a SimpleBaseline head (Xiao et
al., ECCV 2018) that turns it into one heatmap per keypoint; its spec (what a checkpoint stores to rebuild it) and
inference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ... import DplError, models
from .heatmaps import decode, flip_heatmaps

TASK = "keypoints"
MAX_FEATURE_STRIDE = 8          # the default layer: the deepest block at this stride or finer
HEATMAP_STRIDES = (1, 2, 4, 8, 16)
MIN_HEATMAP_SIDE = 16           # the default heatmap stride keeps at least this many cells per side


def default_feature_layer(backbone: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """The deepest residual block (models.block_layers; in a plain net the deepest ReLU) whose feature map has a
    stride of at most MAX_FEATURE_STRIDE (8) pixels: stages.2.0 (stride 8) of cnn-s/cnn-m, stages.2.x (stride 4) of
    resnet8/resnet20, layer4 of resnet18 on images up to 64 px. The head then has the fewest upsampling blocks that
    keep the deepest (most semantic) map of useful resolution; the maps past stride 8 have 4 x 4 cells or fewer on
    32 px images. A backbone with no block that fine gets its finest block."""
    side = input_shape[-1]
    blocks = models.block_layers(backbone, input_shape)
    if not blocks:
        raise DplError(f"{type(backbone).__name__}: no feature map (C x H x W) for a keypoint head")
    fine_enough = [b for b in blocks if side / b["shape"][-1] <= MAX_FEATURE_STRIDE + 1e-6]
    return (fine_enough[-1] if fine_enough else blocks[0])["path"]


def default_heatmap_stride(image_size: int) -> int:
    """4 (SimpleBaseline's) where that leaves at least MIN_HEATMAP_SIDE (16) cells per side, i.e. on images of
    64 px and more; else 2 (16 x 16 heatmaps on 32 px images)."""
    return 4 if image_size // 4 >= MIN_HEATMAP_SIDE else 2


def _block(conv: nn.Module, width: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]


class KeypointNet(nn.Module):
    """A backbone from the registry, read at `layer` (its pooling and classifier never run), and a SimpleBaseline
    head: from the layer's stride s_f to the heatmap stride s_h, log2(s_f / s_h) blocks of a 4x4 transposed
    convolution at stride 2 (BN, ReLU), each `head_width` wide; where s_f equals s_h, one 3x3 convolution block
    instead; where s_f is finer than s_h, 3x3 convolution blocks at stride 2; then a 1x1 convolution to one heatmap
    per keypoint.

    Images (N, C, H, W), normalised, H and W multiples of `heatmap_stride` -> heatmaps (N, K, H / s_h, W / s_h):
    heatmap cell j covers input pixels [j * s_h, (j + 1) * s_h) (heatmaps.py). Where the backbone's rounding
    (sizes that are not multiples of its stride) leaves the head's output another size, it is resized bilinearly
    to that size.

    `arch` is the backbone's registry spec (models.arch_spec; its `num_classes` is unused by the heatmaps, and set
    to the number of keypoints by `build_keypoint_model`). `spec` describes the whole net, resolved defaults
    included, for `keypoint_model_from_spec`.

    The tap is made anew at each forward pass rather than held (as WSDDN holds its own): the hooks are on the
    backbone only while it runs, so a copy (copy.deepcopy, a teacher made from a student) reads its own backbone.
    The backbone's layers past `layer` get no gradient: under DistributedDataParallel, find_unused_parameters.
    """

    def __init__(self, arch: dict, num_keypoints: int, head_width: int = 64, layer: str | None = None,
                 heatmap_stride: int | None = None):
        super().__init__()
        if not 1 <= num_keypoints <= 1024 or not 1 <= head_width <= 4096:
            raise DplError(f"a keypoint net needs 1..1024 keypoints and a head width in 1..4096, got "
                           f"{num_keypoints} and {head_width}")
        c, size = arch.get("in_channels"), arch.get("image_size")
        if not isinstance(c, int) or not isinstance(size, int) or size < 1:
            raise DplError(f"architecture spec {arch} names no in_channels and image_size")
        stride = default_heatmap_stride(size) if heatmap_stride is None else heatmap_stride
        if stride not in HEATMAP_STRIDES or size % stride:
            raise DplError(f"the heatmap stride must be one of {HEATMAP_STRIDES} and divide the image size {size}, "
                           f"got {stride}")
        self.arch, self.num_keypoints, self.head_width = dict(arch), num_keypoints, head_width
        self.heatmap_stride = stride
        self.image_size, self.heatmap_size = size, size // stride
        self.backbone = models.build(arch)
        self.layer = layer or default_feature_layer(self.backbone, (c, size, size))
        with models.Taps(self.backbone, [self.layer], stop=True) as taps:
            shape = models.output_shape(taps, self.layer, (c, size, size))
        if len(shape) != 3:
            raise DplError(f"layer {self.layer!r} gives {'x'.join(map(str, shape))}, not a feature map (C x H x W)")
        channels, _, w = shape
        self.feature_stride = size / w
        steps = round(math.log2(self.feature_stride / stride))
        layers, cin = [], channels
        if steps > 0:
            for _ in range(steps):
                layers += _block(nn.ConvTranspose2d(cin, head_width, 4, 2, 1, bias=False), head_width)
                cin = head_width
        else:
            for _ in range(max(1, -steps)):
                layers += _block(nn.Conv2d(cin, head_width, 3, 2 if steps < 0 else 1, 1, bias=False), head_width)
                cin = head_width
        self.head = nn.Sequential(*layers)
        self.final = nn.Conv2d(head_width, num_keypoints, 1)
        nn.init.normal_(self.final.weight, std=0.001)     # SimpleBaseline's: the heatmaps start near 0
        nn.init.zeros_(self.final.bias)

    @property
    def spec(self) -> dict:
        """{"arch": the backbone's registry spec (a checkpoint's `arch`), "keypoints": the head's fields (a
        checkpoint's `keypoints` section)}: `keypoint_model_from_spec` rebuilds this net from it."""
        return {"arch": dict(self.arch),
                "keypoints": {"num_keypoints": self.num_keypoints, "head_width": self.head_width,
                              "layer": self.layer, "heatmap_stride": self.heatmap_stride,
                              "heatmap_size": self.heatmap_size}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, C, H, W) -> heatmaps (N, K, H / heatmap_stride, W / heatmap_stride)."""
        return self.features_and_heatmaps(x)[1]

    def features_and_heatmaps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the backbone's feature map at `layer`, the heatmaps): what DWPose's feature term reads beside them."""
        with models.Taps(self.backbone, [self.layer], stop=True) as taps:
            fmap = taps.tensor(x, self.layer)
        out = self.final(self.head(fmap))
        size = (x.shape[-2] // self.heatmap_stride, x.shape[-1] // self.heatmap_stride)
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return fmap, out

    def freeze_backbone(self) -> None:
        """Train the head only (DWPose's second stage): the backbone's weights get no gradient and its batch-norm
        statistics stay as they are (it runs in eval mode whatever the net's mode)."""
        self.backbone.requires_grad_(False)
        self.frozen_backbone = True
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "frozen_backbone", False):
            self.backbone.eval()
        return self


def build_keypoint_model(arch: str, num_keypoints: int, in_channels: int, image_size: int, head_width: int = 64,
                         layer: str | None = None, *, heatmap_stride: int | None = None, dropout: float = 0.0,
                         stochastic_depth: float = 0.0) -> KeypointNet:
    """A KeypointNet on the registry classifier `arch` (e.g. "cnn-s", "resnet20", "fitnet-thin:depth=17,width=8")
    for square images of `image_size` px: read at `layer` (None: `default_feature_layer`), heatmaps at
    `heatmap_stride` (None: `default_heatmap_stride`). The backbone's spec gets num_classes = num_keypoints (its
    classifier is unused), so that a checkpoint's `num_classes` is the number of keypoints."""
    name, _ = models.parse_arch(arch)
    if models.is_detector(name):
        raise DplError(f"--arch {arch} is a detector; a keypoint net takes a classifier's backbone (e.g. cnn-m)")
    spec = models.arch_spec(arch, num_classes=num_keypoints, in_channels=in_channels, image_size=image_size,
                            dropout=dropout, stochastic_depth=stochastic_depth)
    return KeypointNet(spec, num_keypoints, head_width, layer, heatmap_stride)


def keypoint_model_from_spec(spec: dict) -> KeypointNet:
    """The net `KeypointNet.spec` describes (a checkpoint's `arch` and `keypoints` sections; untrusted input: every
    field checked), its weights fresh."""
    arch, head = (spec.get("arch"), spec.get("keypoints")) if isinstance(spec, dict) else (None, None)
    if not isinstance(arch, dict) or not isinstance(head, dict):
        raise DplError("a keypoint net's spec needs its 'arch' and 'keypoints' sections")
    fields = {"num_keypoints": int, "head_width": int, "layer": str, "heatmap_stride": int, "heatmap_size": int}
    if set(head) != set(fields) or any(type(head[k]) is not t for k, t in fields.items()):
        raise DplError(f"a keypoint net's 'keypoints' section needs {', '.join(fields)}, got {head}")
    net = KeypointNet(arch, head["num_keypoints"], head["head_width"], head["layer"], head["heatmap_stride"])
    if net.heatmap_size != head["heatmap_size"]:
        raise DplError(f"inconsistent keypoint spec: heatmap size {head['heatmap_size']}, but the net makes "
                       f"{net.heatmap_size}")
    return net


@torch.inference_mode()
def predict(model: KeypointNet, images: torch.Tensor, batch_size: int = 256,
            flip_pairs: list[tuple[int, int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints of normalised images (N, C, H, W) in eval mode, batch by batch on the model's device: (coords
    (N, K, 2) in input pixels, confidence (N, K)), float32 on the CPU (`heatmaps.decode`). With `flip_pairs`, the
    flip test of SimpleBaseline: the heatmaps averaged with those of the mirrored image, mirrored back with left
    and right swapped (`heatmaps.flip_heatmaps`; exact in dpl's pixel convention, with no one-cell shift). The
    model's training mode is restored after."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    coords, confidence = [], []
    try:
        for start in range(0, len(images), batch_size):
            x = images[start: start + batch_size].to(device)
            heat = model(x).float()
            if flip_pairs is not None:
                heat = (heat + flip_heatmaps(model(x.flip(-1)).float(), flip_pairs)) / 2
            c, conf = decode(heat, model.heatmap_stride)
            coords.append(c.cpu())
            confidence.append(conf.cpu())
    finally:
        model.train(was_training)
    if not coords:
        k = model.num_keypoints
        return torch.zeros(0, k, 2), torch.zeros(0, k)
    return torch.cat(coords), torch.cat(confidence)
