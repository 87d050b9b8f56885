"""WSDDN's network: its options, the fixed grid of proposals, the default feature map, RoIAlign of the fixed
proposals as one matrix, the classification and detection streams (and OICR's refinement streams), and their
scores."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import box_iou

from ... import DplError, models

TASK = "wsddn"
EPS = 1e-6


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

