"""dpl's own architectures: ResNets of BasicBlocks (the small `cnn-*` nets and the CIFAR ResNets of the
distillation literature), Wide ResNets, and FitNets' deep thin plain net. Dropout sits before the classifier;
stochastic depth drops residual branches with a probability rising linearly from the first block to
`stochastic_depth` at the last, as in Noisy Student.
"""

from __future__ import annotations

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


def drop_rates(n: int, final: float) -> list[float]:
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
        rates = iter(drop_rates(len(widths) * blocks, stochastic_depth))
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
        rates = iter(drop_rates(3 * n, stochastic_depth))
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
