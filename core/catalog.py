"""A catalog of the names the command line shows before it runs anything: in --help, in shell completion, in
--archs`. Importing this module imports nothing but the standard library, so `dpl -h` and every Tab stay instant.

The registries themselves (what each name builds or computes) stay where they are and import torch;
tests/test_startup.py checks that each list here equals its registry's keys, in order, so the two cannot drift.
"""

from __future__ import annotations

# data.SOURCES, data.FILE_SOURCES, data.BOX_SOURCES; bags.FOLDER
SOURCES = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "stl10", "imagefolder:PATH", "tar:PATH")
FILE_SOURCES = ("imagefolder", "tar")
BOX_SOURCES = ("scenes", "coco")
BAG_FOLDER = "bagfolder"
CLIP_SOURCES = ("clips", "moving", "clipfolder")                    # data.clips.CLIP_SOURCES

# models.REGISTRY, in its order: classifiers, then each detector family on each backbone.
_TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2", "resnext50_32x4d",
                "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                "efficientnet_b0", "efficientnet_b1", "efficientnet_b2")
DETECTOR_BACKBONES = ("cnn-s", "cnn-m", "cnn-l", "resnet8", "resnet14", "resnet20", "resnet32", "resnet8x4",
                      "resnet32x4", "fitnet-thin", *_TORCHVISION)
DETECTOR_FAMILIES = ("frcnn", "retinanet", "fcos")
ARCHS = ("cnn-s", "cnn-m", "cnn-l",
         *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)), *(f"resnet{d}x4" for d in (8, 32)),
         "fitnet-thin",
         *(f"wrn-{d}-{k}" for d in (16, 28, 40) for k in (1, 2, 4, 10) if not (d == 28 and k < 10)),
         *_TORCHVISION,
         *(f"{family}-{b}" for family in DETECTOR_FAMILIES for b in DETECTOR_BACKBONES))

TIMM = "timm:"                                                      # models.TIMM: timm:NAME, any of timm's

LOGIT_LOSSES = ("kd", "dkd", "lskd", "mse")                         # losses.LOGIT_LOSSES
FEATURE_LOSSES = ("at", "rkd", "pkt", "sp", "crd", "hint")          # losses.FEATURE_LOSSES
PRETEXT_TASKS = ("rotation", "jigsaw", "context", "simclr", "peclr",  # methods.pretext.TASKS: on images,
                 "order", "odd-one-out", "tracking")                 # then on clips
CLIP_PRETEXT_TASKS = ("order", "odd-one-out", "tracking")            # methods.pretext.TEMPORAL
SEMI_ALGORITHMS = ("fixmatch", "flexmatch")                         # methods.semi.ALGORITHMS
POOLINGS = ("attention", "gated", "max", "mean")                    # methods.mil.POOLINGS
MAX_PLOTTED_BAGS = 8                                                # methods.mil.MAX_PLOTTED_BAGS

