"""Object detection: Faster R-CNN, RetinaNet and FCOS detectors (`models.DETECTOR_FAMILIES`) taught on boxes, measured
by COCO mAP, labeling pseudo-boxes, and distilled offline (ground truth plus pseudo-boxes) or online (Chen et al.,
NeurIPS 2017; Faster R-CNN only).

Boxes are pixels (x1, y1, x2, y2) of the stored image and class indices 0..C-1 (`boxes.Boxes`); torchvision's
class 0 is the background, so labels are shifted by one at the model's boundary (`to_model`, `detect`).

    model.py     the labeled/unlabeled split of images with boxes, the detector (built, loaded, checked), inference,
                 COCO mAP and the validation of --val, pseudo-boxes
    noise.py     box-aware noise (photometric RandAugment, zoom, flip; the boxes moved alike)
    training.py  `teach` on true boxes, `distill_pseudo` on true plus pseudo-boxes (pooled or balanced steps by
                 `common.Mix`), and `trained`: every detector's checkpoint, through `common.checkpoint_meta`
    chen.py      online distillation from a live teacher detector (Chen et al.; its terms in `losses.detection`)

The names callers use are re-exported here: `detect.teach`, `detect.BoxNoise`, `detect.distill_online`, ...
"""

from .chen import ChenOptions, chen_objective, class_regression, distill_online, roi_outputs
from .model import (
    ANCHOR_KEYS, MAP_FIGURES, TASK, TERMS, VAL, check_classes, check_images, confident, detect, label_boxes,
    load_detector, make_detector, measure, part_of, split_images, targets_of, to_model, validation_of,
    with_pseudo_boxes,
)
from .noise import PHOTOMETRIC, BoxNoise, hflip, photometric, zoom
from .training import PseudoOptions, detection_objective, distill_pseudo, pseudo_objective, teach, trained

__all__ = [
    "ANCHOR_KEYS", "MAP_FIGURES", "PHOTOMETRIC", "TASK", "TERMS", "VAL", "BoxNoise", "ChenOptions", "PseudoOptions",
    "check_classes", "check_images", "chen_objective", "class_regression", "confident", "detect",
    "detection_objective", "distill_online", "distill_pseudo", "hflip", "label_boxes", "load_detector",
    "make_detector", "measure", "part_of", "photometric", "pseudo_objective", "roi_outputs", "split_images",
    "targets_of", "teach", "to_model", "trained", "validation_of", "with_pseudo_boxes", "zoom",
]
