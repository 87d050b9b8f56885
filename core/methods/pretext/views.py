"""The transforms of the pretext tasks, on whole uint8 batches on the device, each sample drawing its own
randomness: jigsaw's permutation set (maximal Hamming distance), the 3x3 grid of tiles and patches that jigsaw
and context cut, SimCLR's views (`Views`: random resized crop, colour jitter, grayscale, blur), and PeCLR's
(`Geometry`: a known rotation, scale, translation and flip per view, then the same appearance transforms) with
the map of the projection that undoes each view's geometry (`undo_latent`)."""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ... import DplError
from ...data import Dataset

GRID = 3                 # jigsaw and context cut a 3x3 grid of cells
MIN_TILE = 6             # smallest tile (or patch) side, in pixels, that still shows something


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
class Geometry:
    """PeCLR's geometric transform of each view, known to the loss and undone on the projection: a rotation about
    the image centre, a zoom, a shift (and the flip of PretextOptions.flip). The defaults are PeCLR's rotation of
    up to 45 degrees either way; its crop margin of 0.9-1.5 around a 1.25 box, as a zoom of 0.8-1.25; its crop
    jitter of up to 15 of 128 pixels, as a shift of up to 0.1 of the side."""

    rotation: float = 45.0                      # degrees, either way
    scale: tuple[float, float] = (0.8, 1.25)    # zoom about the centre, drawn uniformly in LO, HI
    translate: float = 0.1                      # shift, a fraction of the side, either way on each axis

    def __post_init__(self):
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        if not 0 <= self.rotation <= 180:
            raise DplError(f"--view-rotation is in degrees, 0..180, got {self.rotation:g}")
        if len(self.scale) != 2 or not 0.25 <= self.scale[0] <= self.scale[1] <= 4:
            raise DplError(f"--view-scale LO,HI needs 0.25 <= LO <= HI <= 4, got {','.join(map(str, self.scale))}")
        if not 0 <= self.translate <= 0.5:
            raise DplError(f"--view-translate is a fraction of the side in [0, 0.5], got {self.translate:g}")


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
    return appearance(out, views)


def appearance(out: torch.Tensor, views: Views) -> torch.Tensor:
    """float (B, C, H, W) in [0, 1] -> uint8: SimCLR's colour jitter, grayscale and blur, each sample its own draw."""
    b, c = out.shape[:2]
    dev = out.device
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



# ---- PeCLR views and their latent inverse ---------------------------------------------------------------

def peclr_view(x: torch.Tensor, views: Views, geometry: Geometry, flip: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 (B, C, H, W) square images -> (one view of each, uint8; `linear` (B, 2, 2); `shift` (B, 2)).

    In coordinates centred on the image, x right and y down, in units of half the side, a point p of the image
    lands on `linear @ p + 2 * shift` of its view: linear = s R(a) F (R(a) = [[cos a, -sin a], [sin a, cos a]], F
    mirrors x where the sample is flipped) and `shift` is a fraction of the side. One affine resampling (border
    pixels brought in from outside are black), then the appearance transforms of `Views`."""
    b, c, h, w = x.shape
    dev = x.device
    angle = torch.empty(b, device=dev).uniform_(-geometry.rotation, geometry.rotation) * (math.pi / 180)
    zoom = torch.empty(b, device=dev).uniform_(*geometry.scale)
    shift = torch.empty(b, 2, device=dev).uniform_(-geometry.translate, geometry.translate)
    mirror = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=dev)
    cos, sin = angle.cos() * zoom, angle.sin() * zoom
    linear = torch.stack([torch.stack([cos * mirror, -sin], -1), torch.stack([sin * mirror, cos], -1)], -2)
    inverse = torch.linalg.inv(linear)
    # affine_grid maps each output point q to the input point it shows: inverse @ (q - 2 shift)
    theta = torch.cat([inverse, -(inverse @ (2 * shift)[..., None])], -1)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    out = F.grid_sample(x.float() / 255, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return appearance(out, views), linear, shift


def _points(z: torch.Tensor) -> torch.Tensor:
    if z.shape[1] % 2:
        raise DplError(f"PeCLR reads the projection as 2-D points: its width must be even, got {z.shape[1]}")
    return z.reshape(len(z), -1, 2)


def _extent(points: torch.Tensor) -> torch.Tensor:
    """(N, P, 2) -> (N, 2): the range (max - min) of each sample's points on each axis, held constant (PeCLR)."""
    points = points.detach()
    return points.amax(1) - points.amin(1)


def move_latent(z: torch.Tensor, linear: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """What an equivariant projection does under a view's geometry: z (N, D), read as D/2 points in the plane,
    mapped by `linear` (N, 2, 2), then shifted by `shift` (N, 2) (a fraction of the image side) times the range
    of the points on each axis (PeCLR: a pixel shift has no size in the latent space, so it is taken relative to
    the points' extent). The inverse of `undo_latent`."""
    points = _points(z) @ linear.transpose(1, 2)
    return (points + shift[:, None] * _extent(points)[:, None]).reshape(z.shape)


def undo_latent(z: torch.Tensor, linear: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """PeCLR's step before NT-Xent: each view's projection z (N, D), read as D/2 points in the plane, brought
    back through its view's geometry: the shift (relative to the points' range, which a shift leaves alone) taken
    off, then the inverse of `linear` (rotation, zoom, flip) applied. Exact: undo_latent(move_latent(z, A, t), A,
    t) == z."""
    points = _points(z)
    points = points - shift[:, None] * _extent(points)[:, None]
    return (points @ torch.linalg.inv(linear).transpose(1, 2)).reshape(z.shape)
