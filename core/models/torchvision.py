"""torchvision's classifiers adapted to dpl's registry: small images get a 3x3 stem at stride 1 and no max-pool
(as for CIFAR), other channel counts a new first conv, the classifier dpl's dropout, and the residual blocks
stochastic depth.
"""

from __future__ import annotations

from torch import nn
from torchvision.ops import StochasticDepth

from .. import DplError
from .cnn import Classifier, drop_rates


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


def torchvision_resnet(name: str, *, num_classes, in_channels, image_size, dropout, stochastic_depth):
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
    for block, rate in zip(blocks, drop_rates(len(blocks), stochastic_depth)):
        block.drop_path = StochasticDepth(rate, "row")
        mixin = _DropPathBasic if isinstance(block, TvBasic) else _DropPathBottleneck
        block.__class__ = type(f"DropPath{type(block).__name__}", (mixin, type(block)), {})
    return model


def torchvision_mobile(name: str, *, num_classes, in_channels, image_size, dropout, stochastic_depth):
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
