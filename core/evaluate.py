"""Metrics: accuracy, calibration, per-class accuracy; batched inference under inference_mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpl.core import DplError, augment
from dpl.core.train import Runtime


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, input_meta: dict, rt: Runtime,
            batch_size: int = 512) -> torch.Tensor:
    """Logits (float32, on the CPU) of an un-noised model over uint8 images."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start: start + batch_size].to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = model(augment.to_input(x, input_meta["mean"], input_meta["std"], rt.cuda))
        out.append(logits.float().cpu())
    if not out:
        raise DplError("no samples to run the model on")
    return torch.cat(out)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(confidence, edges[1:-1], right=True)   # bin b holds (edges[b], edges[b+1]]
    ece = torch.zeros(())
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.float().mean() * (confidence[members].mean() - correct[members].mean()).abs()
    return float(ece)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """top1, top5, nll, ece (15 bins), per-class accuracy; all fractions in [0, 1]."""
    known = labels >= 0
    logits, labels = logits[known], labels[known]
    if len(labels) == 0:
        raise DplError("the data has no ground-truth labels to measure against")
    probs = logits.softmax(dim=1)
    k = min(5, num_classes)
    topk = logits.topk(k, dim=1).indices
    hit1 = topk[:, 0] == labels
    per_class = []
    for c in range(num_classes):
        members = labels == c
        per_class.append(float(hit1[members].float().mean()) if members.any() else None)
    return {
        "top1": float(hit1.float().mean()),
        "top5": float((topk == labels[:, None]).any(dim=1).float().mean()),
        "nll": float(F.cross_entropy(logits, labels)),
        "ece": expected_calibration_error(probs, labels),
        "per_class": per_class,
        "n": int(len(labels)),
    }


THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def label_quality(predicted: torch.Tensor, confidence: torch.Tensor, truth: torch.Tensor,
                  thresholds=THRESHOLDS) -> dict:
    """Pseudo-label accuracy against ground truth, overall and above each confidence threshold."""
    known = truth >= 0
    predicted, confidence, truth = predicted[known], confidence[known], truth[known]
    if len(truth) == 0:
        raise DplError("the labeled data has no ground truth to measure the pseudo-labels against")
    hit = (predicted == truth).float()
    rows = []
    for t in thresholds:
        keep = confidence >= t
        rows.append({"threshold": t, "coverage": float(keep.float().mean()),
                     "accuracy": float(hit[keep].mean()) if keep.any() else None, "n": int(keep.sum())})
    return {"accuracy": float(hit.mean()), "n": int(len(truth)), "mean_confidence": float(confidence.mean()),
            "thresholds": rows}
