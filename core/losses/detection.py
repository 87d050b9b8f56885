"""The losses of detection and weak supervision, as pure functions of tensors, in float32 like every loss of the
package (the formulas in each docstring; tests/test_detection_losses.py writes each out by hand).

Chen et al. (NeurIPS 2017), the online distillation of a detector (`methods/detect/chen.py`):
    weighted_soft_ce    -sum_c w_c P_t(c) log P_s(c) on the RoI classifier at temperature T, w_0 the background's
    weighted_soft_bce   the same on the RPN's two-class objectness
    bounded_regression  ||R_s - y||^2 where it exceeds ||R_t - y||^2 - m, else 0
    (the third term, the hint, is the package's `hint_mse`)
WSDDN (Bilen & Vedaldi, CVPR 2016) and OICR (Tang et al., CVPR 2017) (`methods/wsddn/`):
    image_bce             the multi-label BCE of the image scores against the classes present
    spatial_regulariser   the features of a class's top region's neighbours pulled towards its own
    refinement_loss       OICR's instance classifier refinement on the previous stream's seeds
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SPATIAL_IOU = 0.6             # WSDDN's spatial regulariser: the neighbours of a class's top region
REFINE_IOU = 0.5              # OICR: a region overlapping a seed this much learns the seed's class


# ---- Chen et al. 2017 ------------------------------------------------------------------------------------

def weighted_soft_ce(student_logits: torch.Tensor, teacher_logits: torch.Tensor, background_weight: float,
                     tau: float = 1.0) -> torch.Tensor:
    """-sum_c w_c P_t(c) log P_s(c), mean over rows; column 0 is the background (weight w_0), the rest weigh 1."""
    w = torch.ones(student_logits.shape[1], device=student_logits.device)
    w[0] = background_weight
    p_t = (teacher_logits.float() / tau).softmax(1)
    return -(w * p_t * (student_logits.float() / tau).log_softmax(1)).sum(1).mean()


def weighted_soft_bce(student_logits: torch.Tensor, teacher_logits: torch.Tensor, background_weight: float,
                      tau: float = 1.0) -> torch.Tensor:
    """The two-class form on objectness logits: object weighs 1, background w_0; mean over every logit."""
    s, t = student_logits.float() / tau, (teacher_logits.float() / tau).sigmoid()
    return -(t * F.logsigmoid(s) + background_weight * (1 - t) * F.logsigmoid(-s)).mean()


def bounded_regression(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Chen's L_b: ||R_s - y||^2 where it exceeds ||R_t - y||^2 - m, else 0; mean over rows ((n, 4) each); 0 (with
    the student's graph) without rows."""
    if len(target) == 0:
        return student.sum() * 0.0
    s_err = (student.float() - target).pow(2).sum(1)
    t_err = (teacher.float() - target).pow(2).sum(1)
    return torch.where(s_err + margin > t_err, s_err, torch.zeros_like(s_err)).mean()


# ---- WSDDN and OICR ----------------------------------------------------------------------------------------

def image_bce(image_scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """WSDDN's loss: the binary cross-entropy of the image scores y (B, C), probabilities, against the multi-hot
    classes present (B, C), mean over every (image, class). Autocast off: CUDA's autocast refuses this op (it
    cannot tell probabilities from logits), and the scores are float32 already."""
    with torch.autocast(image_scores.device.type, enabled=False):
        return F.binary_cross_entropy(image_scores.float(), present.float())


def spatial_regulariser(features: torch.Tensor, region: torch.Tensor, present: torch.Tensor,
                        overlaps: torch.Tensor, iou: float = SPATIAL_IOU) -> torch.Tensor:
    """WSDDN's spatial regulariser (Bilen & Vedaldi 2016, sec. 3.3): for each class present, the features (B, R, D)
    of the regions overlapping its top-scoring region (of `region` (B, R, C)) by IoU >= `iou` (`overlaps` (R, R))
    are pulled towards that region's, weighted by half its squared score, so that the score map is smooth around
    the object rather than peaked on a part. The squared distance is averaged over feature dimensions and over
    the neighbours; the mean is over the (image, class present) pairs."""
    score, top = region.max(1)                                            # (B, C)
    near = (overlaps[top] >= iou).float()                                 # (B, C, R), the top region included
    top_features = features.gather(1, top[..., None].expand(-1, -1, features.shape[2]))     # (B, C, D)
    distance = torch.cdist(top_features, features).square() / features.shape[2]            # (B, C, R)
    per_pair = (near * distance).sum(2) / near.sum(2) * 0.5 * score.detach().square()
    return (per_pair * present).sum() / present.sum().clamp(min=1)


def refinement_loss(logits: torch.Tensor, previous: torch.Tensor, present: torch.Tensor,
                    overlaps: torch.Tensor, iou: float = REFINE_IOU) -> torch.Tensor:
    """OICR's instance classifier refinement (Tang et al., CVPR 2017): each class present in an image takes the
    previous stream's top region as its seed, weighted by that region's score; a region whose IoU with a seed
    reaches `iou` learns the class of the seed it overlaps most, the others background (label 0), each weighted
    by the weight of that seed. `logits` (B, R, C + 1), background first; `previous` (B, R, C) is detached: it
    teaches, it does not learn here."""
    previous = previous.detach()
    weight, seed = previous.max(1)                                     # (B, C): the seeds and their scores
    weight = weight * present
    overlap = overlaps[seed]                                           # (B, C, R)
    overlap = torch.where(present.bool()[..., None], overlap, torch.full_like(overlap, -1.0))
    best, cls = overlap.max(1)                                         # (B, R): the seed each region overlaps most
    target = torch.where(best >= iou, cls + 1, torch.zeros_like(cls))
    w = weight.gather(1, cls)                                          # (B, R)
    nll = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")
    return (w.flatten() * nll).mean()
