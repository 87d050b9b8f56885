"""Models: the architecture registry and what it builds, and the one way to reach inside a model.

    registry     REGISTRY, arch_spec, build (a model from the JSON spec a checkpoint stores), parse_arch
    cnn          dpl's own nets: the ResNets (cnn-*, resnetN), Wide ResNets, FitNets' thin plain net
    torchvision  torchvision's classifiers adapted to small images, other channel counts, dropout, stochastic depth
    timm_models  timm's models as timm:NAME, and their weights from the Hugging Face cache (--pretrained)
    pretrained   torchvision's ImageNet weights (--pretrained), for a classifier or a detector's backbone
    detectors    Faster R-CNN, RetinaNet and FCOS on a registry backbone (FAMILY-BACKBONE), DETECTOR_FAMILIES
    taps         layers by module path, `Taps` (forward hooks), the layer listing, the hint regressor

The submodules' public names are re-exported here: callers write `models.build(...)`, `models.Taps(...)`.
"""

from __future__ import annotations

from .cnn import BasicBlock, Classifier, PlainNet, ResNet, WideBlock, WideResNet, conv3x3
from .registry import REGISTRY, TIMM, arch_spec, build, count_params, parse_arch
from .torchvision import TORCHVISION_MOBILE, TORCHVISION_RESNETS
from .detectors import (CLASSIFIER_PARTS, DETECTOR, DETECTOR_BACKBONES, DETECTOR_FAMILIES, DETECTOR_NAMES,
                        DETECTOR_TERMS, DetectorFamily, DetectorInput, detector_family, is_detector)
from .pretrained import PRETRAINED, Pretrained, load_pretrained, load_pretrained_backbone, pretrained_file
from .timm_models import load_timm_pretrained, timm_model_count
from .taps import (BLOCK_TYPES, FEATURES, Taps, block_layers, feature_layer, get_layer, list_layers, make_regressor,
                   middle_layer, output_shape)

