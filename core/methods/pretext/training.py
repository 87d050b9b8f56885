"""The pretext tasks (`Task` subclasses, registry `TASKS`), their options, and `pretrain`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from ... import DplError, losses, models
from ...data import augment, images as image_files
from ...data import Dataset
from ...data.poses import PoseData
from ..common import ModelOptions, Trained, checkpoint_meta, make_model, train_record
from ...engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch
from .views import (
    GRID, Geometry, Views, crop_patches, grid_for, grid_offsets, maximal_hamming_permutations, min_hamming,
    peclr_view, simclr_view, undo_latent,
)

# Context prediction: the 8 neighbours of the centre cell (row, column), in label order.
NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))


@dataclass(frozen=True, kw_only=True)
class PretextOptions:
    task: str = "rotation"
    head_width: int = 512            # hidden width of the task's MLP head
    crop: bool = True                # rotation: random crop after padding by 1/8 of the side
    flip: bool = True                # random horizontal flip, where the data's classes survive it
    permutations: int = 100          # jigsaw: size of the permutation set
    patch_size: int | None = None    # jigsaw, context: side the backbone sees tiles at [default: image size]
    color_drop: bool = True          # context: keep one colour channel of each patch, noise in the others
    temperature: float = 0.5         # simclr, peclr: NT-Xent temperature
    projection_dim: int = 128        # simclr, peclr: output width of the projection head
    views: Views = field(default_factory=Views)
    geometry: Geometry = field(default_factory=Geometry)    # peclr: each view's known geometric transform
    tuple_window: int = 5            # order: frames a tuple spans, its ends a and c (temporal.py)
    sequences: int = 3               # odd-one-out: sequences per question, one of them shuffled
    sequence_frames: int = 4         # odd-one-out: frames per sequence
    track_gap: int = 3               # tracking: frames between the query and its positive
    margin: float = 0.5              # tracking: the triplet ranking loss's margin on 1 - cos

    def __post_init__(self):
        if self.task not in TASKS:
            raise DplError(f"unknown pretext task {self.task!r}; valid: {', '.join(TASKS)}")
        if self.head_width < 1 or self.projection_dim < 1:
            raise DplError("--head-width and --projection-dim must be at least 1")
        if not 2 <= self.permutations <= math.factorial(GRID * GRID):
            raise DplError(f"--permutations must be in 2..{math.factorial(GRID * GRID)}, got {self.permutations}")
        if self.patch_size is not None and self.patch_size < 1:
            raise DplError(f"--patch-size must be at least 1, got {self.patch_size}")
        if not self.temperature > 0:
            raise DplError(f"--temperature must be > 0, got {self.temperature}")
        if not self.tuple_window >= 3:
            raise DplError(f"--tuple-window must be at least 3 frames (a tuple's ends and a frame between), got "
                           f"{self.tuple_window}")
        if not self.sequences >= 2:
            raise DplError(f"--sequences must be at least 2, got {self.sequences}")
        if not self.sequence_frames >= 3:
            raise DplError(f"--sequence-frames must be at least 3 (a shuffle that is neither the order nor its "
                           f"reverse), got {self.sequence_frames}")
        if not self.track_gap >= 1:
            raise DplError(f"--track-gap must be at least 1 frame, got {self.track_gap}")
        if not 0 <= self.margin <= 2:
            raise DplError(f"--margin must be between 0 and 2 (a distance 1 - cos), got {self.margin}")
        if self.task == "peclr" and self.projection_dim % 2:
            raise DplError(f"--task peclr reads the projection as 2-D points: --projection-dim must be even, got "
                           f"{self.projection_dim}")



def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, d_out))


class Pretext(nn.Module):
    """The model and the task's head: the one module `fit` trains."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head
        # The model runs up to its feature vector: the classifier is not used.
        self.taps = models.Taps(model, [models.FEATURES], stop=True)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's feature vector of each image."""
        return self.taps.tensor(x, models.FEATURES)


class Task:
    """A pretext task: a head on the backbone's feature vector, and a step that makes a batch's inputs and
    targets on the device and returns the loss terms. Built for one dataset; `record` goes to the checkpoint."""

    name = ""

    def __init__(self, opts: PretextOptions, ds: Dataset, rt: Runtime, seed: int):
        self.opts, self.rt = opts, rt
        self.mean, self.std = ds.normalization
        self.size = ds.shape[1]
        self.flip = opts.flip and ds.hflip

    def head(self, width: int) -> nn.Module:
        raise NotImplementedError

    def step(self, net: Pretext, x: torch.Tensor) -> tuple[dict, dict]:
        raise NotImplementedError

    def record(self) -> dict:
        return {"flip": self.flip}

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors the task keeps beside its head (the jigsaw permutation set)."""
        return {}

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return augment.to_input(x, self.mean, self.std, self.rt.cuda)

    def classified(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[dict, dict]:
        return {"ce": losses.cross_entropy(logits, target)}, {"acc": losses.accuracy(logits, target)}


class Rotation(Task):
    name = "rotation"

    def __init__(self, opts, ds, rt, seed):
        super().__init__(opts, ds, rt, seed)
        self.noise = augment.Noise(crop_pad=max(1, self.size // 8) if opts.crop else 0, hflip=self.flip)

    def head(self, width):
        return mlp(width, self.opts.head_width, 4)

    def step(self, net, x):
        x = augment.apply(x, self.noise)
        rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
        target = torch.arange(4, device=x.device).repeat_interleave(len(x))
        return self.classified(net.head(net.embed(self.inputs(rotated))), target)

    def record(self):
        return {**super().record(), "crop": self.opts.crop}


class GridTask(Task):
    """Tasks on tiles of a 3x3 grid: each tile is embedded by the shared backbone at `patch_size`."""

    def __init__(self, opts, ds, rt, seed):
        super().__init__(opts, ds, rt, seed)
        self.grid = grid_for(ds, self.name)
        self.patch_size = opts.patch_size or self.size

    def embed_patches(self, net: Pretext, patches: torch.Tensor, color_drop: bool = False) -> torch.Tensor:
        """(B, K, C, t, t) uint8 -> (B, K * width): each patch embedded by the shared backbone."""
        b, k, c, t, _ = patches.shape
        x = augment.to_input(patches.reshape(b * k, c, t, t), self.mean, self.std)
        if color_drop and c == 3:
            # Doersch et al.: keep one random channel per patch, Gaussian noise (1/100 of the range) in the others.
            keep = F.one_hot(torch.randint(0, 3, (b * k,), device=x.device), 3).bool()[:, :, None, None]
            x = torch.where(keep, x, torch.randn_like(x) * (0.01 / torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)))
        if t != self.patch_size:
            x = F.interpolate(x, size=(self.patch_size, self.patch_size), mode="bilinear", align_corners=False)
        if self.rt.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return net.embed(x).reshape(b, -1)

    def record(self):
        return {**super().record(), "grid": GRID, "cell": self.grid.cell, "tile": self.grid.tile,
                "patch_size": self.patch_size}


class Jigsaw(GridTask):
    name = "jigsaw"

    def __init__(self, opts, ds, rt, seed):
        super().__init__(opts, ds, rt, seed)
        self.permutations = maximal_hamming_permutations(opts.permutations, seed)
        self.perms = self.permutations.to(rt.device)
        self.cells = torch.tensor([(r, c) for r in range(GRID) for c in range(GRID)], device=rt.device)

    def head(self, width):
        return mlp(GRID * GRID * width, self.opts.head_width, self.opts.permutations)

    def step(self, net, x):
        x = augment.apply(x, augment.Noise(hflip=self.flip))
        b = len(x)
        top, left = grid_offsets(b, self.size, self.grid, self.cells.expand(b, -1, -1), x.device)
        tiles = crop_patches(x, top, left, self.grid.tile)
        target = torch.randint(0, len(self.perms), (b,), device=x.device)
        shuffled = tiles[torch.arange(b, device=x.device)[:, None], self.perms[target]]   # slot q shows tile perm[q]
        return self.classified(net.head(self.embed_patches(net, shuffled)), target)

    def record(self):
        return {**super().record(), "permutations": self.opts.permutations,
                "min_hamming": min_hamming(self.permutations)}

    def state(self):
        return {"permutations": self.permutations}


class Context(GridTask):
    name = "context"

    def __init__(self, opts, ds, rt, seed):
        super().__init__(opts, ds, rt, seed)
        self.neighbours = torch.tensor(NEIGHBOURS, device=rt.device)
        self.centre = torch.tensor([[GRID // 2, GRID // 2]], device=rt.device)

    def head(self, width):
        return mlp(2 * width, self.opts.head_width, len(NEIGHBOURS))

    def step(self, net, x):
        x = augment.apply(x, augment.Noise(hflip=self.flip))
        b = len(x)
        target = torch.randint(0, len(NEIGHBOURS), (b,), device=x.device)
        cells = torch.stack([self.centre.expand(b, -1), self.neighbours[target]], dim=1)      # (B, 2, 2)
        top, left = grid_offsets(b, self.size, self.grid, cells, x.device)
        pair = crop_patches(x, top, left, self.grid.tile)
        return self.classified(net.head(self.embed_patches(net, pair, color_drop=self.opts.color_drop)), target)

    def record(self):
        return {**super().record(), "color_drop": self.opts.color_drop}


class SimCLR(Task):
    name = "simclr"

    def __init__(self, opts, ds, rt, seed):
        super().__init__(opts, ds, rt, seed)
        self.views = opts.views.for_size(self.size)

    def head(self, width):
        return mlp(width, self.opts.head_width, self.opts.projection_dim)

    def step(self, net, x):
        both = torch.cat([simclr_view(x, self.views, self.flip), simclr_view(x, self.views, self.flip)])
        # losses.nt_xent, with the similarities kept for the accuracy of the positives
        sim, positives = losses.contrastive_logits(net.head(net.embed(self.inputs(both))), self.opts.temperature)
        return {"nt_xent": losses.cross_entropy(sim, positives)}, {"acc": losses.accuracy(sim, positives)}

    def record(self):
        return {**super().record(), "temperature": self.opts.temperature,
                "projection_dim": self.opts.projection_dim, **asdict(self.views)}


class PeCLR(SimCLR):
    """SimCLR made equivariant to geometry (Spurr et al., ICCV'21): each view is a known rotation, zoom, shift and
    flip of the image (`Geometry`, instead of SimCLR's random resized crop) plus SimCLR's appearance transforms;
    its projection, read as points in the plane, is brought back through the inverse of its geometry
    (`undo_latent`) before NT-Xent, so the two views agree where the latent moves as the image does."""

    name = "peclr"

    def step(self, net, x):
        (v1, a1, t1), (v2, a2, t2) = (peclr_view(x, self.views, self.opts.geometry, self.flip) for _ in range(2))
        z = F.normalize(net.head(net.embed(self.inputs(torch.cat([v1, v2])))).float(), dim=1)     # as PeCLR's code
        z = undo_latent(z, torch.cat([a1, a2]), torch.cat([t1, t2]))
        sim, positives = losses.contrastive_logits(z, self.opts.temperature)
        return {"nt_xent": losses.cross_entropy(sim, positives)}, {"acc": losses.accuracy(sim, positives)}

    def record(self):
        views = {k: v for k, v in super().record().items() if k != "crop_scale"}     # no random resized crop
        return {**views, "geometry": asdict(self.opts.geometry)}


# The temporal tasks subclass Task: their module is imported once Task exists (the package imports this one first).
from .temporal import TEMPORAL  # noqa: E402

TASKS: dict[str, type[Task]] = {t.name: t for t in (Rotation, Jigsaw, Context, SimCLR, PeCLR, *TEMPORAL)}


@dataclass(frozen=True)
class Figures:
    """The images of `poses:` figures as a pool to pretrain on (their keypoints are not read): what `pretrain`,
    `make_model` and the tasks read of a `Dataset`. A mirrored figure is a figure, so flips apply."""

    poses: PoseData
    classes: list[str] = field(default_factory=list)
    num_classes: int = 0
    hflip: bool = True

    def __len__(self) -> int:
        return len(self.poses)

    @property
    def images(self) -> torch.Tensor:
        return self.poses.images

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.poses.shape

    @property
    def spec(self) -> str:
        return self.poses.spec

    @cached_property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return image_files.normalization(self.images)

    def describe(self) -> dict:
        return self.poses.record


def pretext_objective(task: Task, net: Pretext):
    """The step: the task's transform of a batch's images, and its loss terms."""
    def step(batch):
        return task.step(net, batch[1])
    return step


def pretrain(ds: Dataset | PoseData, arch: str, opts: PretextOptions, cfg: TrainConfig, rt: Runtime,
             on_progress: Progress | None = None, resume: ResumeSpec | None = None) -> Trained:
    """Train `arch` on `ds` (a Dataset, or poses' figures, their keypoints unused) with the pretext task. With
    cfg.epochs 0 nothing is trained: the checkpoint then holds the initialised backbone (and head), the baseline of
    every probe table."""
    ds = Figures(ds) if isinstance(ds, PoseData) else ds
    if opts.task in {t.name for t in TEMPORAL}:
        raise DplError(f"--task {opts.task} learns from time: it takes clips (--data clips[:SOURCE], moving:SOURCE or "
                       f"clipfolder:PATH), not {ds.spec}")
    if len(ds) == 0:
        raise DplError(f"{ds.spec}: no samples to pretrain on")
    batch_size = min(cfg.batch_size, len(ds))
    if batch_size < 2:
        raise DplError("pretraining needs batches of at least 2 images (batch norm; SimCLR's negatives)")
    seed_everything(cfg.seed)
    model, spec, _ = make_model(ModelOptions(arch=arch), ds)
    task = TASKS[opts.task](opts, ds, rt, cfg.seed)
    width = model.get_submodule(models.feature_layer(model)).in_features
    net = rt.prepare(Pretext(model, task.head(width)))
    history = []
    with net.taps:          # off at the end: the checkpoint's model runs whole
        if cfg.epochs:
            history = fit(net, pretext_objective(task, net), rt.place(ds.images).shuffled(batch_size, cfg.seed),
                          steps_per_epoch(len(ds), batch_size), cfg, rt, on_progress, resume, batch_images=batch_size)
    last = history[-1] if history else {}
    meta = checkpoint_meta(
        spec, ds, [], cfg, train_record(cfg, batch_size, None),
        {f"pretext_{k}": v for k, v in last.items() if k in ("loss", "acc", "ce", "nt_xent")}, history,
        pretext={"task": opts.task, "head_width": opts.head_width, "feature_width": width, **task.record()})
    state = {**{f"head.{k}": v for k, v in net.head.state_dict().items()}, **task.state()}
    return Trained(net.model.cpu(), meta, history, objective=state)
