"""Self-supervised pretraining (`dpl pretrain`): rotation, jigsaw, context prediction and SimCLR.

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
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .. import DplError, losses, models
from ..data import augment
from ..data import Dataset
from .common import ModelOptions, Trained, checkpoint_meta, make_model, train_record
from ..engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch

GRID = 3                 # jigsaw and context cut a 3x3 grid of cells
MIN_TILE = 6             # smallest tile (or patch) side, in pixels, that still shows something
# Context prediction: the 8 neighbours of the centre cell (row, column), in label order.
NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))


@dataclass(frozen=True, kw_only=True)
class Views:
    """SimCLR's augmentation, per view: random resized crop, colour jitter, grayscale, blur (the flip is
    PretextOptions.flip, shared with the other tasks)."""

    crop_scale: float = 0.2          # smallest crop area, as a fraction of the image
    jitter: float = 0.5              # colour-jitter strength s: brightness/contrast/saturation 0.8s, hue 0.2s
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2      # colour images only
    blur_prob: float | None = None   # Gaussian blur, kernel 10% of the side, sigma in [0.1, 2] [by image size]

    def __post_init__(self):
        if not 0.0 < self.crop_scale <= 1.0:
            raise DplError(f"--crop-scale must be in (0, 1], got {self.crop_scale}")
        if self.jitter < 0:
            raise DplError(f"--color-jitter must be >= 0, got {self.jitter}")
        for name, p in (("--color-jitter-prob", self.jitter_prob), ("--grayscale-prob", self.grayscale_prob),
                        ("--blur-prob", self.blur_prob)):
            if p is not None and not 0.0 <= p <= 1.0:
                raise DplError(f"{name} must be in [0, 1], got {p}")


    def for_size(self, image_size: int) -> Views:
        """SimCLR blurs ImageNet-sized images and leaves CIFAR-sized ones alone: the default blur by size."""
        return self if self.blur_prob is not None else replace(self, blur_prob=0.5 if image_size >= 64 else 0.0)


@dataclass(frozen=True, kw_only=True)
class PretextOptions:
    task: str = "rotation"
    head_width: int = 512            # hidden width of the task's MLP head
    crop: bool = True                # rotation: random crop after padding by 1/8 of the side
    flip: bool = True                # random horizontal flip, where the data's classes survive it
    permutations: int = 100          # jigsaw: size of the permutation set
    patch_size: int | None = None    # jigsaw, context: side the backbone sees tiles at [default: image size]
    color_drop: bool = True          # context: keep one colour channel of each patch, noise in the others
    temperature: float = 0.5         # simclr: NT-Xent temperature
    projection_dim: int = 128        # simclr: output width of the projection head
    views: Views = field(default_factory=Views)

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


# ---- jigsaw permutations --------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def all_permutations(n: int = GRID * GRID) -> torch.Tensor:
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.int8)


def maximal_hamming_permutations(count: int, seed: int) -> torch.Tensor:
    """Noroozi & Favaro's greedy Algorithm 1: start from a random permutation of the 9 tiles, then add,
    one at a time, the candidate farthest (in Hamming distance) from those chosen so far.

    "Farthest" ranks candidates by their minimum distance to the chosen set first, then by the summed
    distance the paper uses (its 1^T D), so the set's minimum distance is as large as greedy allows.
    Returns int64 (count, 9).
    """
    candidates = all_permutations()
    n = len(candidates)
    gen = torch.Generator().manual_seed(seed)
    pick = int(torch.randint(n, (1,), generator=gen))
    nearest = torch.full((n,), GRID * GRID + 1, dtype=torch.int64)
    total = torch.zeros(n, dtype=torch.int64)
    chosen = []
    taken = torch.zeros(n, dtype=torch.bool)
    for _ in range(count):
        chosen.append(pick)
        taken[pick] = True
        d = (candidates != candidates[pick]).sum(1, dtype=torch.int64)
        nearest = torch.minimum(nearest, d)
        total += d
        score = nearest * (GRID * GRID * count + 1) + total     # lexicographic: nearest, then total
        pick = int(score.masked_fill(taken, -1).argmax())
    return candidates[chosen].long()


def min_hamming(perms: torch.Tensor) -> int:
    """The smallest Hamming distance between two distinct rows."""
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    d.fill_diagonal_(perms.shape[1] + 1)
    return int(d.min())


# ---- grid geometry --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """A 3x3 grid of `cell`-pixel cells; each tile is `tile` pixels, placed at a random offset (the jitter)
    within its cell, so neighbouring tiles are `cell - tile` pixels apart on average."""

    cell: int
    tile: int

    @staticmethod
    def for_size(size: int) -> "Grid":
        cell = size // GRID
        gap = max(2, round(0.15 * cell))      # Noroozi & Favaro: 64-pixel tiles in 75-pixel cells
        return Grid(cell, cell - gap)


def min_grid_size() -> int:
    return next(s for s in itertools.count(GRID) if Grid.for_size(s).tile >= MIN_TILE)


def grid_for(ds: Dataset, task: str) -> Grid:
    size = ds.shape[1]
    grid = Grid.for_size(size)
    if grid.tile < MIN_TILE:
        need = min_grid_size()
        raise DplError(f"{task} needs images of at least {need}x{need} (a 3x3 grid of {MIN_TILE}-pixel tiles "
                       f"with gaps); {ds.spec} has {size}x{size}: pass --resize {need} or more")
    return grid


def grid_offsets(b: int, size: int, grid: Grid, cells: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Top and left pixel of each tile: `cells` (b, K, 2) holds each tile's (row, column) in the grid. The
    grid sits at a random place in the image and every tile at a random place in its cell."""
    slack = size - GRID * grid.cell
    origin = torch.randint(0, slack + 1, (b, 1, 2), device=device)
    jitter = torch.randint(0, grid.cell - grid.tile + 1, cells.shape, device=device)
    corner = origin + cells * grid.cell + jitter
    return corner[..., 0], corner[..., 1]


def crop_patches(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) and per-patch corners (B, K) -> patches (B, K, C, size, size), by one gather."""
    steps = torch.arange(size, device=x.device)
    rows = (top[..., None] + steps)[..., :, None]       # (B, K, S, 1)
    cols = (left[..., None] + steps)[..., None, :]      # (B, K, 1, S)
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    return x[batch, :, rows, cols].permute(0, 1, 4, 2, 3)   # (B, K, S, S, C) -> (B, K, C, S, S)


# ---- SimCLR views ---------------------------------------------------------------------------------

def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) plane.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _uniform(b: int, low: float, high: float, device) -> torch.Tensor:
    return torch.empty(b, device=device).uniform_(low, high).view(b, 1, 1, 1)


def color_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """float (B, C, H, W) in [0, 1]; per-sample brightness, contrast, saturation and hue factors."""
    b, dev, s = x.shape[0], x.device, 0.8 * strength
    x = (x * _uniform(b, max(0.0, 1 - s), 1 + s, dev)).clamp(0, 1)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * _uniform(b, max(0.0, 1 - s), 1 + s, dev) + mean).clamp(0, 1)
    if x.shape[1] == 3:
        grey = _grey(x)
        x = ((x - grey) * _uniform(b, max(0.0, 1 - s), 1 + s, dev) + grey).clamp(0, 1)
        angle = _uniform(b, -0.2 * strength, 0.2 * strength, dev).view(b) * 2 * math.pi
        cos, sin = angle.cos(), angle.sin()
        rot = torch.zeros(b, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        yiq = _YIQ.to(dev)
        m = torch.linalg.inv(yiq) @ rot @ yiq
        x = torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """float (B, C, H, W), per-sample sigma (B,): separable blur by one grouped convolution per axis."""
    b, c, h, w = x.shape
    k = max(3, (min(h, w) // 10) | 1)
    t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kernel = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)   # (B*C, k)
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (k // 2, k // 2, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, k // 2, k // 2), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


def simclr_view(x: torch.Tensor, views: Views, flip: bool) -> torch.Tensor:
    """uint8 (B, C, H, W) -> one random view of each image, uint8, same size."""
    b, c, h, w = x.shape
    dev = x.device
    # Random resized crop (area fraction and aspect ratio per sample) and flip, as one affine resampling.
    area = torch.empty(b, device=dev).uniform_(views.crop_scale, 1.0)
    ratio = torch.empty(b, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3)).exp()
    sx = (area * ratio).sqrt().clamp(max=1.0)
    sy = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - sx)
    cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - sy)
    mirror = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=dev)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * mirror, cx, sy, cy
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    out = F.grid_sample(x.float() / 255, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if views.jitter > 0 and views.jitter_prob > 0:
        apply = torch.rand(b, device=dev).view(b, 1, 1, 1) < views.jitter_prob
        out = torch.where(apply, color_jitter(out, views.jitter), out)
    if c == 3 and views.grayscale_prob > 0:
        apply = torch.rand(b, device=dev).view(b, 1, 1, 1) < views.grayscale_prob
        out = torch.where(apply, _grey(out).expand_as(out), out)
    if views.blur_prob:
        apply = torch.rand(b, device=dev).view(b, 1, 1, 1) < views.blur_prob
        out = torch.where(apply, gaussian_blur(out, torch.empty(b, device=dev).uniform_(0.1, 2.0)), out)
    return out.mul_(255).round_().clamp_(0, 255).to(torch.uint8)


# ---- the tasks ------------------------------------------------------------------------------------

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


TASKS: dict[str, type[Task]] = {t.name: t for t in (Rotation, Jigsaw, Context, SimCLR)}


def pretrain(ds: Dataset, arch: str, opts: PretextOptions, cfg: TrainConfig, rt: Runtime,
             on_progress: Progress | None = None, resume: ResumeSpec | None = None) -> Trained:
    """Train `arch` on `ds` with the pretext task. With cfg.epochs 0 nothing is trained: the checkpoint then
    holds the initialised backbone (and head), the baseline of every probe table."""
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
    if cfg.epochs:
        history = fit(net, lambda batch: task.step(net, batch[1]), rt.place(ds.images).shuffled(batch_size, cfg.seed),
                      steps_per_epoch(len(ds), batch_size), cfg, rt, on_progress, resume, batch_images=batch_size)
    net.taps.remove()
    last = history[-1] if history else {}
    meta = checkpoint_meta(
        spec, ds, [], cfg, train_record(cfg, batch_size, None),
        {f"pretext_{k}": v for k, v in last.items() if k in ("loss", "acc", "ce", "nt_xent")}, history,
        pretext={"task": opts.task, "head_width": opts.head_width, "feature_width": width, **task.record()})
    state = {**{f"head.{k}": v for k, v in net.head.state_dict().items()}, **task.state()}
    return Trained(net.model.cpu(), meta, history, objective=state)
