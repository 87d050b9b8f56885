"""Self-supervised pretraining (`dpl pretrain`): rotation, jigsaw, context prediction, SimCLR and PeCLR on images;
order, odd-one-out and tracking on clips.

Each task is a batch transform plus a head on the backbone's feature vector (the input of the model's final
Linear, read by a forward pre-hook), trained by the one loop in `train.fit`. All transforms work on whole
uint8 batches on the device, each sample drawing its own randomness. The checkpoint holds the model exactly
as `teach` makes it; the task's head (and the jigsaw permutation set) is stored under the prefix `objective.`.

    rotation  RotNet (Gidaris et al., ICLR'18): every image at 0/90/180/270 degrees, 4-way classification.
    jigsaw    Noroozi & Favaro (ECCV'16): 3x3 tiles with gaps and jitter, shuffled by one of P permutations
              of maximal Hamming distance; the tiles' concatenated embeddings predict the permutation.
    context   Doersch et al. (ICCV'15): the centre patch and one of its 8 neighbours; the pair of embeddings
              predicts the neighbour's position. Colour dropping defeats the chromatic-aberration shortcut.
    simclr    Chen et al. (ICML'20): two views per image, projection head, NT-Xent over the 2N-2 negatives.
    peclr     Spurr et al. (ICCV'21): SimCLR equivariant to geometry: each view a known rotation, zoom, shift and
              flip, undone on the projection (read as 2-D points) before NT-Xent; appearance stays invariant.

On clips (temporal.py), frames rendered for each step's questions:

    order        Shuffle and Learn (Misra et al., ECCV'16): is a tuple of 3 frames in order (or reversed)?
                 Tuples from windows drawn by their motion (mean absolute frame difference).
    odd-one-out  Fernando et al. (CVPR'17): which of N sequences of F frames is shuffled? Sum-of-differences encodings.
    tracking     Wang & Gupta (ICCV'15): a moving patch and the same patch k frames later, found by template
                 matching, against a patch of another clip: triplet ranking loss on 1 - cos.

    views.py     the transforms: jigsaw's permutations, the grid of tiles and patches, SimCLR's and PeCLR's views,
                 PeCLR's inverse map of the projection
    training.py  the tasks, their options, and `pretrain`
    temporal.py  the tasks on clips, their sampling and tracker, and `pretrain_clips`

The names callers use are re-exported here: `pretext.pretrain`, `pretext.TASKS`, ...
"""

from .training import (
    NEIGHBOURS, TASKS, Context, Figures, GridTask, Jigsaw, PeCLR, Pretext, PretextOptions, Rotation, SimCLR, Task,
    mlp, pretext_objective, pretrain,
)
from .temporal import (
    TEMPORAL, ClipFrames, ClipTask, OddOneOut, Order, Questions, Tracking, crop, frame_normalization, frames_needed,
    held_out, motion_profile, moving_box, ncc, odd_permutation, odd_sequences, order_tuples, pretrain_clips, track,
    track_times, triplet_cosine,
)
from .views import (
    GRID, MIN_TILE, Geometry, Grid, Views, all_permutations, appearance, color_jitter, crop_patches, gaussian_blur,
    grid_for, grid_offsets, maximal_hamming_permutations, min_grid_size, min_hamming, move_latent, peclr_view,
    simclr_view, undo_latent,
)

__all__ = [
    "GRID", "MIN_TILE", "NEIGHBOURS", "TASKS", "TEMPORAL", "ClipFrames", "ClipTask", "Context", "Figures", "Geometry",
    "Grid", "GridTask", "Jigsaw", "OddOneOut", "Order", "PeCLR", "Pretext", "PretextOptions", "Questions", "Rotation",
    "SimCLR", "Task", "Tracking", "Views", "all_permutations", "appearance", "crop", "frame_normalization",
    "frames_needed", "held_out", "motion_profile", "moving_box", "ncc", "odd_permutation", "odd_sequences",
    "order_tuples", "pretrain_clips", "track", "track_times", "triplet_cosine",
    "color_jitter", "crop_patches", "gaussian_blur", "grid_for", "grid_offsets", "maximal_hamming_permutations",
    "min_grid_size", "min_hamming", "mlp", "move_latent", "peclr_view", "pretext_objective", "pretrain",
    "simclr_view", "undo_latent",
]
