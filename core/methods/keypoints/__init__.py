"""Keypoints (2-D pose estimation): the heatmap network, its targets, loss and read-out, pose-aware noise and the
measures (PCK, COCO keypoint AP by OKS). Library code: tensors and plain lists in, tensors and dicts out.

Conventions:
    keypoints    float (N, K, 3) = (x, y, visibility) in pixels of the input image, pixel i covering [i, i + 1)
                 (centre i + 0.5); visibility as COCO's: 0 not labeled (or outside the image), 1 labeled but
                 occluded, 2 visible. The coordinates of a keypoint of visibility 0 mean nothing.
    images       float (N, C, H, W), normalised by the caller, for the model (the noise takes uint8 too)
    heatmaps     (N, K, H / s, W / s) at stride s: cell j covers input pixels [j * s, (j + 1) * s), centre (j + 0.5) * s
    parts        {name: [keypoint indices]}, e.g. {"body": [...], "hands": [...], "face": [...]}
    flip_pairs   [(left, right), ...] keypoint indices that trade places when the image is mirrored
    sigmas       OKS sigmas, one float per keypoint (COCO's: 0.026 for the nose ... 0.107 for the hips)

    model.py     KeypointNet (a registry backbone read at a stride-8-or-finer block, a SimpleBaseline head),
                 its spec and rebuilding, `predict`
    heatmaps.py  Gaussian targets, the weighted heatmap MSE, `decode` (argmax + quarter-cell refinement)
    noise.py     flip (with left/right swap), rotation, scale and translation of images and keypoints alike
    measure.py   PCK per part, OKS and COCO keypoint AP through pycocotools
    training.py  `teach` through train.fit (from scratch or --init), `measure` of a model on pose data, the
                 checkpoint, `load_model`
    crops.py     part experts' crops (hands around the wrists, the face around the head, sized by the torso)
    pseudo.py    keypoint label folders, labeling by one model or by part experts (DOPE), their quality, the
                 offline student's data
    distill.py   online distillation from a live teacher (DWPose's two stages)
"""

from .heatmaps import (
    DEFAULT_SIGMA, decode, flip_heatmaps, flip_pairs_permutation, gaussian_targets, heatmap_loss, inside,
)
from .measure import AP_FIGURES, PCK_THRESHOLDS, keypoint_boxes, oks, oks_ap, pck
from .model import (
    HEATMAP_STRIDES, MAX_FEATURE_STRIDE, MIN_HEATMAP_SIDE, TASK, KeypointNet, build_keypoint_model,
    default_feature_layer, default_heatmap_stride, keypoint_model_from_spec, predict,
)
from .noise import PoseNoise, pose_matrices, pose_noise, warp_poses
from .training import PCK_FIGURES, SET_KEYS, VAL, check_data, keypoint_objective, load_model, make_model, measure, teach
from .crops import PART_CROPS, POSE_PARTS, crop, part_data, part_sets, to_canvas, to_crop, torso
from .pseudo import (
    KeypointLabels, check_experts, concat, expert_part, is_keypoint_folder, label_experts, quality, read_labels,
    run_model, with_pseudo, without_truth, write_labels,
)
from .distill import PoseKD, distill_online

__all__ = [
    "AP_FIGURES", "DEFAULT_SIGMA", "HEATMAP_STRIDES", "MAX_FEATURE_STRIDE", "MIN_HEATMAP_SIDE", "PCK_THRESHOLDS",
    "TASK", "KeypointNet", "PoseNoise", "build_keypoint_model", "decode", "default_feature_layer",
    "default_heatmap_stride", "flip_heatmaps", "flip_pairs_permutation", "gaussian_targets", "heatmap_loss",
    "inside", "keypoint_boxes", "keypoint_model_from_spec", "oks", "oks_ap", "pck", "pose_matrices", "pose_noise",
    "predict", "run_model", "warp_poses", "PCK_FIGURES", "VAL", "check_data", "keypoint_objective", "load_model", "measure",
    "teach", "make_model", "SET_KEYS", "PART_CROPS", "POSE_PARTS", "crop", "part_data", "part_sets", "to_canvas", "to_crop",
    "torso", "KeypointLabels", "check_experts", "concat", "expert_part", "is_keypoint_folder", "label_experts",
    "quality", "read_labels", "with_pseudo", "without_truth", "write_labels", "PoseKD", "distill_online",
]
