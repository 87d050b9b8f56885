"""Heatmaps: the Gaussian targets of keypoints, the weighted MSE between heatmaps, and the read-out of keypoints
from heatmaps (argmax with SimpleBaseline's quarter-cell refinement).

Coordinates: a keypoint (x, y) is in pixels of the input image, pixel i covering [i, i + 1) (its centre i + 0.5).
A heatmap at `stride` s has cells of s x s input pixels: cell j covers input pixels [j * s, (j + 1) * s), its
centre at (j + 0.5) * s. In heatmap units (input pixels / s) the keypoint is at (x / s, y / s) and cell j's centre
at j + 0.5: a keypoint at a cell's centre gives a Gaussian peaking exactly on that cell, and is decoded exactly.
"""

from __future__ import annotations

import torch

from ... import DplError

# Heatmap cells. SimpleBaseline and HRNet take 2 on heatmaps of 64 x 48 cells; these have 16 to 32 a side, where
# 1.5 keeps neighbouring keypoints' peaks apart and still spreads each over the 3 x 3 cells decode reads.
DEFAULT_SIGMA = 1.5


def _side(heatmap_size) -> tuple[int, int]:
    return (heatmap_size, heatmap_size) if isinstance(heatmap_size, int) else tuple(heatmap_size)


def inside(keypoints: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """(N, K) bool: the keypoint lies in the image [0, width) x [0, height) (in the units of the coordinates)."""
    x, y = keypoints[..., 0], keypoints[..., 1]
    return (x >= 0) & (x < width) & (y >= 0) & (y < height)


def gaussian_targets(keypoints: torch.Tensor, heatmap_size, stride: float, sigma: float = DEFAULT_SIGMA,
                     outside: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The regression targets of keypoints (N, K, 3) = (x, y, visibility) in input pixels: (targets (N, K, h, w),
    weights (N, K)), float32 on the keypoints' device.

    targets[n, k, j, i] = exp(-((i + 0.5 - x / stride)^2 + (j + 0.5 - y / stride)^2) / (2 sigma^2)), `sigma` in
    heatmap cells: an unnormalised Gaussian (its peak is 1 where the keypoint sits on a cell centre, less between
    centres), not truncated. `heatmap_size` is h = w, or (h, w). Weights are 1 for a labeled keypoint (visibility
    1 or 2) and 0 for an unlabeled one (visibility 0), whose target is all zeros; unless `outside`, a labeled
    keypoint outside the heatmap's extent [0, w * stride) x [0, h * stride) also gets weight 0 (its target is
    kept: the tail of its Gaussian)."""
    h, w = _side(heatmap_size)
    kp = keypoints.float()
    labeled = kp[..., 2] > 0
    xy = torch.where(labeled[..., None], kp[..., :2], 0.0)                     # unlabeled points may hold NaN
    cx, cy = xy[..., 0] / stride, xy[..., 1] / stride                          # (N, K), heatmap units
    xs = torch.arange(w, device=kp.device, dtype=torch.float32) + 0.5
    ys = torch.arange(h, device=kp.device, dtype=torch.float32) + 0.5
    gx = torch.exp(-(xs - cx[..., None]) ** 2 / (2 * sigma ** 2))             # (N, K, w)
    gy = torch.exp(-(ys - cy[..., None]) ** 2 / (2 * sigma ** 2))             # (N, K, h)
    targets = gy[..., :, None] * gx[..., None, :] * labeled[..., None, None]
    weights = labeled if outside else labeled & inside(kp, h * stride, w * stride)
    return targets, weights.float()


def heatmap_loss(pred: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted heatmap MSE: per keypoint, the mean over the h x w cells of (pred - target)^2 (in float32),
    times its weight; summed and divided by the sum of the weights (the number of labeled keypoints for 0/1
    weights): the mean over labeled keypoints. 0 (with a zero gradient) when no keypoint is labeled.
    SimpleBaseline's JointsMSELoss differs by a factor: it halves, and divides by all keypoints."""
    per = (pred.float() - targets.float()).pow(2).mean((2, 3))
    w = weights.float()
    return (per * w).sum() / w.sum().clamp(min=1e-12)


def decode(heatmaps: torch.Tensor, stride: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints from heatmaps (N, K, h, w): (coords (N, K, 2) = (x, y) in input pixels, confidence (N, K)), float32.

    The argmax cell (i, j) (the first in row-major order on ties), moved by a quarter of a cell on each axis toward
    its higher neighbour on that axis (not moved where the neighbours are equal, or on an axis where the cell is at
    the heatmap's edge): SimpleBaseline / HRNet's get_final_preds. Then x = (i + 0.5 + dx) * stride, likewise y.
    A keypoint on a cell centre is decoded exactly from its `gaussian_targets` heatmap; one elsewhere within a
    quarter of a cell on each axis (the refinement's error is at most 0.25 cell where the argmax is the nearest
    cell). Confidence is the heatmap's maximum: 1 for a planted Gaussian on a cell centre, and for a trained net
    roughly in [0, 1] (the targets' range) but unbounded, possibly negative."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.float().flatten(2)
    confidence, idx = flat.max(2)
    px, py = idx % w, idx // w

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return flat.gather(2, (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).unsqueeze(2)).squeeze(2)

    dx = (at(py, px + 1) - at(py, px - 1)).sign() * ((px > 0) & (px < w - 1))
    dy = (at(py + 1, px) - at(py - 1, px)).sign() * ((py > 0) & (py < h - 1))
    coords = torch.stack([px + 0.5 + 0.25 * dx, py + 0.5 + 0.25 * dy], -1) * stride
    return coords.float(), confidence


def flip_pairs_permutation(num_keypoints: int, flip_pairs, device=None) -> torch.Tensor:
    """The permutation (K,) that swaps each (left, right) pair of keypoint indices; the others stay."""
    perm = list(range(num_keypoints))
    for left, right in flip_pairs:
        if not (0 <= left < num_keypoints and 0 <= right < num_keypoints):
            raise DplError(f"flip pair ({left}, {right}) names a keypoint outside 0..{num_keypoints - 1}")
        perm[left], perm[right] = right, left
    return torch.tensor(perm, dtype=torch.long, device=device)


def flip_heatmaps(heatmaps: torch.Tensor, flip_pairs) -> torch.Tensor:
    """The heatmaps of the horizontally mirrored image: each map mirrored (cell i <-> w - 1 - i, which in this
    pixel convention is x <-> W - x exactly) and each (left, right) pair's maps swapped."""
    perm = flip_pairs_permutation(heatmaps.shape[1], flip_pairs, heatmaps.device)
    return heatmaps.flip(-1)[:, perm]
