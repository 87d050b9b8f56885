"""Weakly supervised deep detection networks (`dpl wsddn`; Bilen & Vedaldi, CVPR 2016): a detector learnt from
image-level class labels alone.

A backbone from the registry gives a feature map, read by `models.Taps` (what follows it never runs): by default
the deepest residual block fine enough for the smallest proposal to cover roi x roi cells (`default_feature_layer`:
stride 4 on 64 px images with the default proposals), not the coarser map before global pooling. Region
proposals are a fixed multi-scale sliding grid,
the same for every image and blind to its content (so they never see ground truth): squares of each side in
`proposal_sizes` (fractions of the image side) stretched to each aspect ratio h/w in `proposal_ratios` (the
area kept), at every `proposal_stride` (a fraction of the side) across the image, plus the last position
flush with the right and bottom edges; duplicates dropped. RoIAlign (`torchvision.ops.roi_align`) pools each
region's features to roi x roi, two fully connected layers of width `hidden` (ReLU) describe it, and two
linear streams score it:

    classification  s^cls_rc = softmax over classes c of fc_cls(region r)
    detection       s^det_rc = softmax over regions r of fc_det(region r)
    region score    x_rc = s^cls_rc * s^det_rc,      image score  y_c = sum_r x_rc, clamped to (1e-6, 1 - 1e-6)

and the loss is the binary cross-entropy of y against the image's multi-hot class labels (`bce`,
`losses.detection.image_bce`). Training
noise is what leaves image labels unchanged: random crop (the image padded by 1/8 of its side) and, where the
source's classes survive it, horizontal flip. RoIAlign of the fixed proposals is a fixed linear map of the
feature map, applied as one matrix (`roi_align_matrix`).

With `refine` K > 0, OICR's online instance classifier refinement (Tang et al., CVPR 2017) adds K streams on
the same region features, each a softmax over the classes and background per region, trained by
`losses.detection.refinement_loss` on the seeds of the stream before it (the first: x; the seeds never see
ground truth, only the image labels); the read-out is then the mean of the K streams' class probabilities.
Without refinement the read-out is x. With `spatial` > 0, WSDDN's spatial regulariser
(`losses.detection.spatial_regulariser`) is added to the loss.

Read out, the detections of class c are the proposals ranked by their read-out score, per-class NMS at IoU
NMS_IOU, the best DETECTIONS_PER_CLASS kept; an image's top box of class c is its proposal of largest
read-out score (with refinement, `two_stream_*` figures measure x alone as well). With `vote` < 1 each of
these boxes is then voted (`voted`): the score-weighted mean of the proposals overlapping it by IoU >= vote,
which places it between the grid's positions (`proposal_*corloc` keep the top proposal's CorLoc). The two
baselines of `measure` have the same proposals, the same network and the same voting: the whole image as the
one box of each class (scored y_c), and "objectness without the detection stream": each proposal scored by the
classification stream alone, s^cls_rc (the network's belief that region r shows class c, with no comparison
between regions), ranked, suppressed and voted like the detections.

The checkpoint (`meta["task"] = "wsddn"`) holds the whole network: `backbone.*` (the registry model, `arch`;
its own classifier is unused), `head.*`, `cls.*`, `det.*`; `meta["wsddn"]` says how, and `meta["data"]` is
the data record of the scenes or COCO data it learnt from (`scenes.scene_spec_of` rebuilds them).

    network.py   the options, the proposals, the network and its scores
    training.py  the noise, the objective and `train_wsddn` (its checkpoint through `common.checkpoint_meta`)
    readout.py   predictions, boxes and measures, loading a checkpoint, `dpl eval` of one, pseudo-boxes

The names callers use are re-exported here: `wsddn.train_wsddn`, `wsddn.measure`, ...
"""

from ...losses.detection import REFINE_IOU, SPATIAL_IOU, refinement_loss, spatial_regulariser
from .network import (
    EPS, TASK, Wsddn, WsddnOptions, default_feature_layer, enlarged, grid_proposals, refined_scores, roi_align_matrix,
    scores_of,
)
from .readout import (
    DETECTIONS_PER_CLASS, NMS_IOU, BoxLabelOptions, data_of, detections, evaluate_checkpoint, is_wsddn, label_boxes,
    load_model, measure, options_of, predict, pseudo_boxes, top_boxes, voted, whole_image,
)
from .training import VAL, VAL_FIGURES, as_dataset, noise_of, train_wsddn, validation_of, wsddn_objective

__all__ = [
    "DETECTIONS_PER_CLASS", "EPS", "NMS_IOU", "REFINE_IOU", "SPATIAL_IOU", "TASK", "VAL", "VAL_FIGURES",
    "BoxLabelOptions", "Wsddn", "WsddnOptions", "as_dataset", "data_of", "default_feature_layer", "detections",
    "enlarged", "evaluate_checkpoint", "grid_proposals", "is_wsddn", "label_boxes", "load_model", "measure",
    "noise_of", "options_of", "predict", "pseudo_boxes", "refined_scores", "refinement_loss", "roi_align_matrix",
    "scores_of", "spatial_regulariser", "top_boxes", "train_wsddn", "validation_of", "voted", "whole_image",
    "wsddn_objective",
]
