"""Measuring per-frame features on clips: few-shot action recognition and the normalised pose of a frame.

Few-shot action recognition (`few_shot`): each clip's per-frame features (T, D) are pooled over time into one
vector, [mean, standard deviation, mean absolute change between consecutive frames] (3D), the light classifier
over the sequence; an episode draws k clips of each class from the support pool (the train split), standardises
the pooled vectors by the support set's own mean and standard deviation (a feature that does not vary there is
left out), and labels each query clip (the evaluated split) with the class of the nearest centroid (Euclidean; a
prototypical classifier, which needs no training and is exact to check by hand). The accuracy is the mean over
`episodes` episodes, each its own draw of the support set (seeded), with their standard deviation.

Normalised poses (`normalised_pose`): keypoints (x, y) relative to the centre of their own extent, divided by its
larger side, so that a pose says where the joints are relative to each other whatever the figure's place and size
(Hong et al.'s normalised pose); motion is the change of that between consecutive frames.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .. import DplError
from ..data.clips import ClipSet


def clip_frames(clips: ClipSet, frames: int, batch_clips: int = 64) -> torch.Tensor:
    """uint8 (N, frames, C, S, S): the first `frames` frames of every clip, decoded once for the models that read
    them."""
    out = torch.empty(len(clips), frames, *clips.shape, dtype=torch.uint8)
    for start in range(0, len(clips), batch_clips):
        rows = np.arange(start, min(start + batch_clips, len(clips)))
        out[start:start + len(rows)] = clips.frames(rows, np.tile(np.arange(frames), (len(rows), 1)))
    return out


@torch.inference_mode()
def frame_features(embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], video: torch.Tensor,
                   batch_clips: int = 16) -> torch.Tensor:
    """Features (N, T, D) of every frame of `video` (N, T, C, S, S) uint8: `embed(x, previous)` takes frames
    (n, C, S, S) and the frame before each (the first frame is its own previous) and returns (n, D)."""
    out = []
    for start in range(0, len(video), batch_clips):
        x = video[start:start + batch_clips]
        previous = torch.cat([x[:, :1], x[:, :-1]], 1)
        f = embed(x.flatten(0, 1), previous.flatten(0, 1)).float().cpu()
        out.append(f.reshape(len(x), x.shape[1], -1))
    return torch.cat(out)


def pooled(features: torch.Tensor) -> torch.Tensor:
    """Clip vectors (N, 3D) of per-frame features (N, T, D): mean, standard deviation and mean absolute change
    over time."""
    change = (features[:, 1:] - features[:, :-1]).abs().mean(1) if features.shape[1] > 1 else \
        torch.zeros_like(features[:, 0])
    return torch.cat([features.mean(1), features.std(1, unbiased=False), change], 1)


def nearest_centroid(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """Predicted classes of `query` (q, F): the nearest class mean of `support` (s, F), both standardised by the
    support set's mean and standard deviation (features constant over it left out)."""
    mean, std = support.mean(0), support.std(0, unbiased=False)
    keep = std > 1e-8
    s, q = (support[:, keep] - mean[keep]) / std[keep], (query[:, keep] - mean[keep]) / std[keep]
    centroids = torch.stack([s[support_labels == c].mean(0) for c in range(num_classes)])
    return torch.cdist(q, centroids).argmin(1)


def few_shot(support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor,
             query_labels: torch.Tensor, shots: int, episodes: int = 20, seed: int = 0) -> dict:
    """Accuracy of the nearest-centroid classifier on pooled clip features with `shots` support clips per class,
    over `episodes` seeded draws: {"shots", "episodes", "accuracy" (mean), "std", "per_episode"}."""
    support_labels, query_labels = support_labels.long(), query_labels.long()
    classes = sorted(set(support_labels.tolist()) | set(query_labels.tolist()))
    if min(classes, default=0) < 0:
        raise DplError("few-shot action recognition needs every clip's action class; some clips have none")
    num_classes = max(classes) + 1
    counts = torch.bincount(support_labels, minlength=num_classes)
    if int(counts.min()) < shots:
        raise DplError(f"--few-shot {shots}: the support clips have {int(counts.min())} of some class, fewer than "
                       f"{shots}")
    s_vec, q_vec = pooled(support_features.float()), pooled(query_features.float())
    rng = np.random.default_rng(seed)
    accuracy = []
    for _ in range(episodes):
        picked = np.concatenate([rng.choice(np.flatnonzero(support_labels.numpy() == c), shots, replace=False)
                                 for c in range(num_classes)])
        predicted = nearest_centroid(s_vec[picked], support_labels[picked], q_vec, num_classes)
        accuracy.append(float((predicted == query_labels).float().mean()))
    return {"shots": shots, "episodes": episodes, "accuracy": float(np.mean(accuracy)),
            "std": float(np.std(accuracy, ddof=1)) if episodes > 1 else 0.0, "per_episode": accuracy}


def normalised_pose(coords: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinates (..., K, 2) relative to the centre of their extent (over `valid` points, (..., K) bool; all when
    None), divided by its larger side (at least 1e-6)."""
    if valid is None:
        valid = torch.ones(coords.shape[:-1], dtype=torch.bool, device=coords.device)
    big = torch.finfo(coords.dtype).max
    lo = torch.where(valid[..., None], coords, big).amin(-2)
    hi = torch.where(valid[..., None], coords, -big).amax(-2)
    none = ~valid.any(-1)
    lo, hi = torch.where(none[..., None], 0, lo), torch.where(none[..., None], 1, hi)
    centre, side = (lo + hi) / 2, (hi - lo).amax(-1).clamp_min(1e-6)
    return (coords - centre[..., None, :]) / side[..., None, None]
