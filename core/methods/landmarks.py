"""Unsupervised landmarks through conditional image generation (Jakab et al., NeurIPS 2018), task `landmarks`.

Two frames of one clip, a target at time t and a source at another time t' (drawn at random, t' != t), go through
two encoders. The keypoint encoder Phi sees the target and makes K heatmaps (at stride 4: 16 x 16 cells on 64 px
frames); a softmax over each map's cells makes it a distribution whose mean u_k (soft-argmax) is landmark k, in
[-1, 1] frame coordinates (x, y; -1 the left or top edge of the frame, +1 the right or bottom one). The bottleneck
keeps only those K points: each is drawn again as a Gaussian map exp(-||p - u_k||^2 / (2 sigma^2)) over the cell
centres p. The appearance encoder Psi sees the source frame; the decoder takes Psi's feature map concatenated with
the Gaussian maps and upsamples it (bilinear x2, 3x3 convolutions) to the target frame, the Gaussian maps drawn
again at each resolution it passes and concatenated there too (IMM's code renders them at every decoder size);
with `skips`, Psi's feature map of that resolution as well (a U-Net's skips, from the source frame only).
The appearance of the figure and of its scene comes from the source; its geometry can only pass through the K
points, so they learn to follow what moves.

sigma is 0.1 in [-1, 1] coordinates (the paper's 1 / sigma^2 = 100): 0.05 of the frame side, 3.2 px at 64 px.

The loss: L1 between the reconstruction and the target in normalised pixel space (`pixel`), plus a perceptual term
(`perceptual`) from a FIXED network whose weights never train: the L1 distance between its feature maps of the
reconstruction and of the target, each layer's divided by the mean magnitude of the target's features there
(so every layer counts alike, as Chen & Koltun balance VGG's layers), averaged over the layers. No pretrained VGG
is at hand, so the network is either
- `random` (the default): a fixed randomly initialised 3-layer conv net (3x3 convolutions 16, 32, 64 wide,
  strides 1, 2, 2, ReLU after each, He-normal weights from `--perceptual-seed`, no bias), compared after each
  ReLU. Random convolutional features are a known perceptual/texture loss (Ulyanov et al. 2017 and He et al. 2016
  synthesise textures and images with random-weight networks): they measure local structure at several scales
  that a pixel loss averages away. Its weights are kept in the checkpoint under `objective.perceptual.`;
- or a dpl classifier checkpoint (`--perceptual CKPT`, e.g. `dpl pretrain --data poses` or `dpl teach`), read in
  eval mode through `models.Taps` at its residual blocks of stride 8 or finer (`perceptual_layers`), the frames
  renormalised to its input statistics and resized to its input size.

Evaluation as the paper's: a linear regressor (`keypoint_regression`, ridge in closed form) from the K x 2 landmark
coordinates to the 15 body joints of the figure, normalised by its box ((xy - box centre) / max(box w, h)), fitted
on frames of the training clips and measured on frames of the held-out test clips: the mean over labelled joints
of ||prediction - truth||, a fraction of the figure's size. The random-initialised model (`--epochs 0`) is the
baseline of the same regressor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import DplError, artifacts, models
from ..data import clips as clip_data
from ..data import images as image_files
from ..engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, steps_per_epoch
from ..engine.sampling import shuffled_batches
from .common import Trained, checkpoint_meta, parent, train_record

TASK = "landmarks"
ARCH = "landmarks"              # the `arch` name a landmark checkpoint records (not a registry architecture)
BODY_JOINTS = tuple(range(15))  # the figure's body joints (core/data/pose_figures.PARTS["body"])
RANDOM = "random"
RANDOM_WIDTHS = (16, 32, 64)    # the random perceptual net's layers
RANDOM_STRIDES = (1, 2, 2)
MAX_PERCEPTUAL_STRIDE = 8       # a classifier's blocks read by the perceptual term: stride 8 or finer
NORM_FRAMES = 64                # clips sampled for the input normalisation (their first frames)


@dataclass(frozen=True, kw_only=True)
class LandmarkOptions:
    landmarks: int = 10                 # K
    sigma: float = 0.1                  # the bottleneck's Gaussians, in [-1, 1] frame coordinates
    width: int = 16                     # the encoders' first width (doubled at each stride 2, at most 8x)
    skips: bool = False                 # the decoder also takes the source's features at every resolution
    perceptual: Path | None = None      # a dpl classifier checkpoint; None: the fixed random net
    perceptual_seed: int = 0
    perceptual_weight: float = 1.0
    eval_frames: int = 4                # frames per clip the regression reads, spread evenly over the clip
    ridge: float = 1e-3                 # the regression's ridge, on standardised coordinates

    def __post_init__(self):
        if not 1 <= self.landmarks <= 256:
            raise DplError(f"--landmarks must be between 1 and 256, got {self.landmarks}")
        if not (0 < self.sigma <= 2 and math.isfinite(self.sigma)):
            raise DplError(f"--sigma must be in (0, 2] ([-1, 1] frame coordinates), got {self.sigma}")
        if not 1 <= self.width <= 1024:
            raise DplError(f"--width must be between 1 and 1024, got {self.width}")
        if not (self.perceptual_weight >= 0 and math.isfinite(self.perceptual_weight)):
            raise DplError(f"--perceptual-weight must be a number >= 0, got {self.perceptual_weight}")
        if not 1 <= self.eval_frames <= 4096:
            raise DplError(f"--eval-frames must be at least 1, got {self.eval_frames}")
        if not (self.ridge >= 0 and math.isfinite(self.ridge)):
            raise DplError(f"--ridge must be a number >= 0, got {self.ridge}")


# ---- the network ---------------------------------------------------------------------------------------

def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _encoder(channels: int, width: int, down: int) -> tuple[nn.ModuleList, list[int]]:
    """Stages: a conv block at full resolution, then `down` times a stride-2 block and a stride-1 block, the width
    doubled at each stride (at most 8x); and each stage's width."""
    stages, widths, cin = [nn.Sequential(*_conv(channels, width))], [width], width
    for i in range(down):
        cout = width * min(2 ** (i + 1), 8)
        stages.append(nn.Sequential(*_conv(cin, cout, 2), *_conv(cout, cout)))
        widths.append(cout)
        cin = cout
    return nn.ModuleList(stages), widths


def _run(stages: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """Every stage's output, finest first."""
    out = []
    for stage in stages:
        x = stage(x)
        out.append(x)
    return out


def cell_centres(side: int, device=None) -> torch.Tensor:
    """The centres of a side x side map's cells in [-1, 1] coordinates: (side,), cell j at (2j + 1) / side - 1."""
    return (torch.arange(side, device=device, dtype=torch.float32) * 2 + 1) / side - 1


def soft_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps (N, K, H, W) -> (the means (N, K, 2) of their softmax over the cells, x then y, in [-1, 1]; the
    distributions' standard deviation (N, K), the root of the summed variances of x and y)."""
    n, k, h, w = heatmaps.shape
    prob = heatmaps.float().flatten(2).softmax(-1).view(n, k, h, w)
    xs, ys = cell_centres(w, heatmaps.device), cell_centres(h, heatmaps.device)
    px, py = prob.sum(2), prob.sum(3)                         # marginals over x (N, K, W) and y (N, K, H)
    mx, my = (px * xs).sum(-1), (py * ys).sum(-1)
    var = (px * xs ** 2).sum(-1) - mx ** 2 + (py * ys ** 2).sum(-1) - my ** 2
    return torch.stack([mx, my], -1), var.clamp_min(0).sqrt()


def gaussian_maps(points: torch.Tensor, side: int, sigma: float) -> torch.Tensor:
    """Points (N, K, 2) in [-1, 1] -> maps (N, K, side, side): exp(-||p - u_k||^2 / (2 sigma^2)) at the cell
    centres p; separable, so it peaks at the cell nearest each point."""
    c = cell_centres(side, points.device)
    gx = torch.exp(-(c - points[..., :1]) ** 2 / (2 * sigma ** 2))      # (N, K, side) along x
    gy = torch.exp(-(c - points[..., 1:]) ** 2 / (2 * sigma ** 2))      # along y
    return gy[..., :, None] * gx[..., None, :]


class LandmarkNet(nn.Module):
    """The keypoint encoder Phi, the appearance encoder Psi and the decoder (the module docstring); `mean` and
    `std` (buffers) normalise uint8 frames, so the net alone reads frames (`landmark_points`). With `skips`,
    each decoder stage also takes Psi's feature map of its own resolution (a U-Net's skips, from the source frame
    only); without, Psi's coarsest map alone, as the paper's. `spec` is a checkpoint's `arch`:
    `landmark_model_from_spec` rebuilds the net from it."""

    def __init__(self, *, landmarks: int, channels: int, image_size: int, width: int = 16, sigma: float = 0.1,
                 map_size: int | None = None, skips: bool = False, mean=None, std=None):
        super().__init__()
        map_size = map_size or max(1, image_size // 4)
        down = round(math.log2(image_size / map_size)) if image_size % map_size == 0 else -1
        if down < 0 or map_size << down != image_size:
            raise DplError(f"the landmark maps' side {map_size} must be the frame side {image_size} over a power of 2")
        self.landmarks, self.channels, self.image_size = landmarks, channels, image_size
        self.width, self.sigma, self.map_size, self.down, self.skips = width, float(sigma), map_size, down, skips
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.5] * channels).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std if std is not None else [0.25] * channels).view(1, -1, 1, 1))
        self.keypoint_encoder, kw = _encoder(channels, width, down)
        self.heatmaps = nn.Conv2d(kw[-1], landmarks, 1)
        self.appearance_encoder, aw = _encoder(channels, width, down)
        stages, cin = [], aw[-1]
        for i in range(down + 1):                 # at map_size * 2^i, coarsest first; the last at the frame's side
            skip = aw[down - i] if skips and i else 0
            cout = aw[down - i]
            stages.append(nn.Sequential(*_conv(cin + skip + landmarks, cout), *_conv(cout, cout)))
            cin = cout
        self.decoder = nn.ModuleList(stages)
        self.output = nn.Conv2d(cin, channels, 1)

    @property
    def spec(self) -> dict:
        return {"name": ARCH, "num_classes": self.landmarks, "in_channels": self.channels,
                "image_size": self.image_size, "width": self.width, "sigma": self.sigma, "map_size": self.map_size,
                "skips": self.skips}

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (N, C, S, S) -> the nets' float input."""
        return (frames.float() / 255 - self.mean) / self.std

    def locate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised frames -> (landmarks (N, K, 2) in [-1, 1], the spread of each heatmap's softmax (N, K))."""
        return soft_argmax(self.heatmaps(_run(self.keypoint_encoder, x)[-1]))

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised target and source frames -> (the target reconstructed, normalised; its landmarks; their
        spreads)."""
        points, spread = self.locate(target)
        appearance = _run(self.appearance_encoder, source)          # finest first
        y = appearance[-1]
        for i, stage in enumerate(self.decoder):
            parts = [y]
            if i:
                parts = [F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)]
                if self.skips:
                    parts.append(appearance[self.down - i])
            side = parts[0].shape[-1]
            y = stage(torch.cat([*parts, gaussian_maps(points, side, self.sigma).to(y.dtype)], 1))
        return self.output(y), points, spread


def landmark_model_from_spec(spec: dict, path: Path | str = "spec") -> LandmarkNet:
    """The net a checkpoint's `arch` describes (untrusted: every field checked), its weights fresh."""
    fields = {"name": str, "num_classes": int, "in_channels": int, "image_size": int, "width": int,
              "sigma": float, "map_size": int, "skips": bool}
    if not isinstance(spec, dict) or set(spec) != set(fields) or spec.get("name") != ARCH or any(
            type(spec[k]) is not t for k, t in fields.items()):
        raise DplError(f"{path}: a landmark net's arch needs {', '.join(fields)} (name {ARCH!r}), got {spec}")
    if not (1 <= spec["num_classes"] <= 256 and 1 <= spec["in_channels"] <= 4 and 1 <= spec["image_size"] <= 4096
            and 1 <= spec["width"] <= 1024 and 0 < spec["sigma"] <= 2 and 1 <= spec["map_size"] <= spec["image_size"]):
        raise DplError(f"{path}: a landmark net's arch is out of range: {spec}")
    try:
        return LandmarkNet(landmarks=spec["num_classes"], channels=spec["in_channels"],
                           image_size=spec["image_size"], width=spec["width"], sigma=spec["sigma"],
                           map_size=spec["map_size"], skips=spec["skips"])
    except DplError as e:
        raise DplError(f"{path}: {e}") from None


# ---- the fixed perceptual network --------------------------------------------------------------------

def feature_l1(recon: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """The perceptual term: per layer, mean |f(recon) - f(target)| over the mean |f(target)| (detached), averaged
    over the layers, in float32."""
    terms = [(r.float() - t.float()).abs().mean() / t.float().abs().mean().detach().clamp_min(1e-6)
             for r, t in zip(recon, target)]
    return torch.stack(terms).mean()


class RandomFeatures(nn.Module):
    """A fixed, randomly initialised conv net (RANDOM_WIDTHS, RANDOM_STRIDES, 3x3, ReLU after each, no bias),
    its He-normal weights drawn from `seed`: the same seed gives the same net on every machine."""

    def __init__(self, channels: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        convs, cin = [], channels
        for width, stride in zip(RANDOM_WIDTHS, RANDOM_STRIDES):
            conv = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * math.sqrt(2 / (cin * 9)))
            convs.append(conv)
            cin = width
        self.convs = nn.ModuleList(convs)
        self.seed = seed
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for conv in self.convs:
            x = F.relu(conv(x))
            out.append(x)
        return out


class Perceptual:
    """The fixed network of the perceptual term: `features(x)` of normalised frames (the landmark net's
    normalisation), a list of feature maps; `record` describes it for the checkpoint; `state` its tensors kept
    there (the random net's), `parents` the checkpoint it was read from. A context manager: a classifier's taps
    come off on exit."""

    def __init__(self, opts: LandmarkOptions, channels: int, size: int, mean, std, rt: Runtime):
        self.mean = torch.tensor(mean, device=rt.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=rt.device).view(1, -1, 1, 1)
        self.taps, self.parents, self.state = None, [], {}
        if opts.perceptual is None:
            self.net = RandomFeatures(channels, opts.perceptual_seed).to(rt.device)
            self.record = {"kind": RANDOM, "seed": opts.perceptual_seed, "widths": list(RANDOM_WIDTHS),
                           "strides": list(RANDOM_STRIDES), "kernel": 3, "activation": "relu",
                           "init": "he-normal", "layers": [f"convs.{i}" for i in range(len(RANDOM_WIDTHS))]}
            self.state = {f"perceptual.{k}": v.cpu() for k, v in self.net.state_dict().items()}
            return
        path = Path(opts.perceptual)
        ckpt = artifacts.load_checkpoint(path)
        if ckpt.heads:
            raise DplError(f"{path}: a student with {len(ckpt.heads)} heads; --perceptual takes one classifier")
        c, s = ckpt.input["channels"], ckpt.input["size"]
        if c != channels:
            raise DplError(f"--perceptual {path}: a classifier of {c}-channel images, and the frames have {channels}")
        net = ckpt.build_model().eval().requires_grad_(False)
        self.size, self.layers = s, perceptual_layers(net, (c, s, s))       # read on the CPU, before moving it
        self.net = net.to(rt.device)
        self.ckpt_mean = torch.tensor(ckpt.input["mean"], device=rt.device).view(1, -1, 1, 1)
        self.ckpt_std = torch.tensor(ckpt.input["std"], device=rt.device).view(1, -1, 1, 1)
        self.taps = models.Taps(self.net, self.layers, stop=True)
        self.record = {"kind": "checkpoint", "path": str(path), "sha256": ckpt.sha256(), "arch": ckpt.arch["name"],
                       "layers": self.layers, "size": s}
        self.parents = [parent("perceptual", path, self.record["sha256"])]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.taps is None:
            return self.net(x)
        x = ((x * self.std + self.mean) - self.ckpt_mean) / self.ckpt_std
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)
        found = self.taps(x)
        return [found[p] for p in self.layers]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.taps is not None:
            self.taps.remove()


def perceptual_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """A classifier's residual blocks (models.block_layers) with a stride of MAX_PERCEPTUAL_STRIDE or finer."""
    side = input_shape[-1]
    blocks = models.block_layers(model, input_shape)
    fine = [b["path"] for b in blocks if side / b["shape"][-1] <= MAX_PERCEPTUAL_STRIDE + 1e-6]
    if not fine:
        raise DplError(f"--perceptual: {type(model).__name__} has no feature map of stride {MAX_PERCEPTUAL_STRIDE} "
                       "or finer to compare frames by")
    return fine


# ---- training ------------------------------------------------------------------------------------------

def pair_batches(clips: clip_data.ClipSet, batch_size: int, seed: int, rt: Runtime):
    """`batches(epoch)` for fit: each epoch visits the clips in shuffled batches; clip i's target frame t and
    source frame t' != t are drawn from (seed, epoch). A batch is ((B, 3) int64 [clip, t, t'], frames uint8
    (B, 2, C, S, S): target, source), only those frames rendered (by DataLoader workers with --workers)."""
    feed = rt.place()

    def gather(index: torch.Tensor) -> torch.Tensor:
        index = index.cpu().numpy()
        return clips.frames(index[:, 0], index[:, 1:])

    def batches(epoch: int):
        rng = np.random.default_rng([seed, epoch, 0x1a4d])
        lengths = clips.lengths
        t = rng.integers(0, lengths)
        other = (t + rng.integers(1, lengths)) % lengths          # any frame but t
        table = torch.from_numpy(np.stack([np.arange(len(clips)), t, other], 1).astype(np.int64))
        order = shuffled_batches(len(clips), batch_size, seed, epoch, torch.device("cpu"))
        return feed((table[idx] for idx in order), gather)
    return batches


def landmark_objective(net: LandmarkNet, perceptual: Perceptual, opts: LandmarkOptions, rt: Runtime):
    """The step: the target reconstructed from its landmarks and the source's appearance; `pixel` (L1 in
    normalised pixels) and `perceptual` (weighted `feature_l1` of the fixed net), and the heatmaps' mean spread."""
    def step(batch):
        _, frames = batch
        target, source = net.normalise(frames[:, 0]), net.normalise(frames[:, 1])
        if rt.cuda:
            target = target.contiguous(memory_format=torch.channels_last)
            source = source.contiguous(memory_format=torch.channels_last)
        recon, _, spread = net(target, source)
        terms = {"pixel": (recon.float() - target).abs().mean()}
        if opts.perceptual_weight:
            with torch.no_grad():
                wanted = perceptual.features(target)
            terms["perceptual"] = opts.perceptual_weight * feature_l1(perceptual.features(recon), wanted)
        return terms, {"spread": spread.mean().detach()}
    return step


def input_of_clips(clips: clip_data.ClipSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The frames' per-channel mean and std, from the first frame of up to NORM_FRAMES clips spread evenly."""
    rows = np.unique(np.linspace(0, len(clips) - 1, min(NORM_FRAMES, len(clips))).round().astype(np.int64))
    return image_files.normalization(clips.frames(rows, np.zeros((len(rows), 1), np.int64))[:, 0])


def train_landmarks(clips: clip_data.ClipSet, opts: LandmarkOptions, cfg: TrainConfig, rt: Runtime,
                    on_progress: Progress | None = None, resume: ResumeSpec | None = None,
                    evaluation: tuple[clip_data.ClipSet, clip_data.ClipSet] | None = None) -> Trained:
    """Train the landmark net on frame pairs of `clips` (cfg.epochs 0: the random-initialised net, the baseline);
    `evaluation` = (clips to fit the regression on, held-out clips to measure it on), both with keypoints: its
    figures go to the checkpoint's metrics (`regression_error`, ...)."""
    clips, skipped = clip_data.check_length(clips, 2, "a target and a source frame")
    if len(clips) == 0:
        raise DplError(f"{clips.spec}: no clips to learn landmarks from")
    batch_size = min(cfg.batch_size, len(clips))
    seed_everything(cfg.seed)
    mean, std = input_of_clips(clips)
    c, s = clips.channels, clips.size
    if s % 4 or s < 8:
        raise DplError(f"{clips.spec}: landmark maps are at stride 4: the frame side must be a multiple of 4 "
                       f"(at least 8), got {s}")
    net = rt.prepare(LandmarkNet(landmarks=opts.landmarks, channels=c, image_size=s, width=opts.width,
                                 sigma=opts.sigma, skips=opts.skips, mean=mean, std=std))
    history = []
    with Perceptual(opts, c, s, mean, std, rt) as perceptual:
        if cfg.epochs:
            history = fit(net, landmark_objective(net, perceptual, opts, rt),
                          pair_batches(clips, batch_size, cfg.seed, rt), steps_per_epoch(len(clips), batch_size),
                          cfg, rt, on_progress, resume, batch_images=2 * batch_size)
    metrics = {"train_loss": history[-1]["loss"]} if history else {}
    if evaluation is not None:
        found = measure(net, *evaluation, frames=opts.eval_frames, ridge=opts.ridge)
        metrics.update({"regression_error": found["error"], "regression_train_error": found["train_error"],
                        "mean_pose_error": found["mean_pose_error"], "regression_frames": found["frames"],
                        "regression_data": found["data"]})
    record = train_record(cfg, batch_size, None, pairs="target t and source t' != t of one clip, drawn per epoch",
                          **({"skipped_clips": skipped} if skipped else {}))
    section = {"landmarks": opts.landmarks, "sigma": opts.sigma, "sigma_units": "[-1, 1] frame coordinates",
               "map_size": net.map_size, "image_size": s, "width": opts.width, "skips": opts.skips,
               "pixel_loss": "l1",
               "perceptual": perceptual.record, "perceptual_weight": opts.perceptual_weight,
               "regression": {"joints": list(BODY_JOINTS), "frames_per_clip": opts.eval_frames, "ridge": opts.ridge,
                              "target": "(xy - box centre) / max(box w, h)"}}
    meta = checkpoint_meta(net.spec, None, perceptual.parents, cfg, record, metrics, history, task=TASK,
                           data=clips.record, classes=[f"landmark_{k}" for k in range(opts.landmarks)],
                           input_meta=artifacts.input_meta(c, s, mean, std), landmarks=section)
    return Trained(net.cpu(), meta, history, perceptual.state)


# ---- reading landmarks, evaluation ---------------------------------------------------------------------

@torch.inference_mode()
def landmark_points(model: LandmarkNet, frames: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The landmarks of uint8 frames (n, C, S, S): (n, K, 2) float32 on the CPU, x then y in [-1, 1] frame
    coordinates (pixel x = (u + 1) / 2 * S); in eval mode, batch by batch on the model's device."""
    was_training = model.training
    model.eval()
    device = model.mean.device
    out = []
    try:
        for start in range(0, len(frames), batch_size):
            out.append(model.locate(model.normalise(frames[start: start + batch_size].to(device)))[0].float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.landmarks, 2)


def evaluation_times(lengths: np.ndarray, per_clip: int) -> np.ndarray:
    """(N, m) frame indices spread evenly over each clip (m = per_clip, at most the shortest clip's length;
    repeated where a clip is shorter)."""
    m = max(1, min(per_clip, int(lengths.min()))) if len(lengths) else per_clip
    frac = (np.arange(m) + 0.5) / m
    return np.minimum((frac[None] * lengths[:, None]).astype(np.int64), lengths[:, None] - 1)


def clip_landmarks(model: LandmarkNet, clips: clip_data.ClipSet, per_clip: int,
                   chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Landmarks (n, K, 2), true keypoints (n, J, 3) and figure boxes (n, 4) of `per_clip` frames of every clip,
    rendered a chunk of clips at a time."""
    times = evaluation_times(clips.lengths, per_clip)
    points, keypoints, boxes = [], [], []
    for start in range(0, len(clips), chunk):
        rows = np.arange(start, min(start + chunk, len(clips)))
        made = clips.poses(rows, times[rows])
        frames = made["frames"].flatten(0, 1)
        points.append(landmark_points(model, frames))
        keypoints.append(made["keypoints"].flatten(0, 1))
        boxes.append(made["boxes"].flatten(0, 1))
    return torch.cat(points), torch.cat(keypoints), torch.cat(boxes)


def measure(model: LandmarkNet, fit_clips: clip_data.ClipSet, test_clips: clip_data.ClipSet, frames: int = 4,
            ridge: float = 1e-3, joints=BODY_JOINTS) -> dict:
    """The paper's figure: `keypoint_regression` of the body joints from the landmarks, fitted on `frames`
    frames of each clip of `fit_clips`, measured on as many of each of `test_clips`."""
    for c in (fit_clips, test_clips):
        if not c.has_keypoints:
            raise DplError(f"{c.spec}: no true keypoints to measure landmarks against")
    train = clip_landmarks(model, fit_clips, frames)
    test = clip_landmarks(model, test_clips, frames)
    found = keypoint_regression(*train, *test, joints=joints, ridge=ridge)
    return {**found, "frames": {"fit": len(train[0]), "test": len(test[0])},
            "data": {"fit": fit_clips.spec, "test": test_clips.spec}}


def evaluation_clips(clips: clip_data.ClipSet) -> tuple[clip_data.ClipSet, clip_data.ClipSet] | str:
    """The clips the regression is fitted on (the training clips) and measured on (the held-out test split of the
    same synthetic clips); or why there is no evaluation: clips without true keypoints, or training clips that
    are a test split already."""
    if not clips.has_keypoints:
        return f"{clips.spec} has no true keypoints: the landmark regression is skipped"
    split, made, kind = getattr(clips, "split", None), getattr(clips, "made", None), getattr(clips, "kind", None)
    if split != "train" or made is None:
        return f"{clips.spec} is no training split of synthetic clips: the landmark regression, fitted on training " \
               f"clips and measured on held-out ones, is skipped"
    from ..data.clip_figures import build_clips

    return clips, build_clips(made, "test", kind)


def normalised_keypoints(keypoints: torch.Tensor, boxes: torch.Tensor, joints) -> tuple[torch.Tensor, torch.Tensor]:
    """(xy - box centre) / max(box w, h) of `joints` (n, J, 2), float64, and their weights (n, J): labelled
    (visibility > 0) on a figure whose box is not empty."""
    joints = list(joints)
    kp, boxes = keypoints[:, joints].double(), boxes.double()
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = (boxes[:, 2:] - boxes[:, :2]).amax(1)
    xy = (kp[..., :2] - centre[:, None]) / size.clamp_min(1e-6)[:, None, None]
    return xy, ((kp[..., 2] > 0) & (size > 0)[:, None]).double()


def keypoint_regression(train_x: torch.Tensor, train_kp: torch.Tensor, train_boxes: torch.Tensor,
                        test_x: torch.Tensor, test_kp: torch.Tensor, test_boxes: torch.Tensor,
                        joints=BODY_JOINTS, ridge: float = 1e-3) -> dict:
    """A linear regressor from landmarks to keypoints, fitted on one set of frames and measured on another.

    `*_x` (n, K, 2) (or (n, D)): the landmarks (any features); `*_kp` (n, P, 3): true keypoints x, y in pixels,
    visibility (0: not labelled, left out of the fit and of the error); `*_boxes` (n, 4): figure boxes x1, y1, x2,
    y2 in pixels; `joints`: the keypoints regressed (indices into P). The targets are the joints normalised by
    the figure's box, (xy - box centre) / max(box w, h). The features are standardised by the training frames'
    mean and std (a constant feature left at 0), a constant column appended, and each joint's (x, y) fitted in
    closed form on its labelled training frames, minimising mean ||X a - y||^2 + ridge ||a||^2 (the intercept not
    penalised), in float64.

    Returns `error`: the mean over the labelled joints of the test frames of ||prediction - truth|| (a fraction of
    the figure's size); `train_error` the same on the training frames; `mean_pose_error` the error of the
    training frames' mean pose predicted for every test frame (the regressor with no landmark); `per_joint`
    (J,) test errors (None for a joint never labelled in the test frames); `coef` (J, D + 1, 2) the fitted map."""
    x, xt = train_x.reshape(len(train_x), -1).double(), test_x.reshape(len(test_x), -1).double()
    if x.shape[1] != xt.shape[1] or len(x) != len(train_kp) or len(xt) != len(test_kp):
        raise DplError(f"keypoint regression: {tuple(train_x.shape)} training features for {len(train_kp)} frames "
                       f"and {tuple(test_x.shape)} test features for {len(test_kp)}")
    y, w = normalised_keypoints(train_kp, train_boxes, joints)
    yt, wt = normalised_keypoints(test_kp, test_boxes, joints)
    mu, sd = x.mean(0), x.std(0, unbiased=False)
    sd = torch.where(sd > 1e-12, sd, torch.ones_like(sd))
    design = lambda f: torch.cat([(f - mu) / sd, torch.ones(len(f), 1, dtype=f.dtype)], 1)   # noqa: E731
    a, at = design(x), design(xt)
    d = a.shape[1]
    counts = w.sum(0).clamp_min(1)                                               # (J,)
    gram = torch.einsum("nj,nd,ne->jde", w, a, a) / counts[:, None, None]
    penalty = torch.diag(torch.tensor([float(ridge)] * (d - 1) + [0.0], dtype=torch.float64))
    gram = gram + penalty + 1e-10 * torch.eye(d, dtype=torch.float64)           # solvable for an unlabelled joint
    rhs = torch.einsum("nj,nd,njc->jdc", w, a, y) / counts[:, None, None]
    coef = torch.linalg.solve(gram, rhs)                                         # (J, D + 1, 2)

    def error(features, truth, weight):
        dist = (torch.einsum("nd,jdc->njc", features, coef) - truth).norm(dim=-1)
        return float((dist * weight).sum() / weight.sum().clamp_min(1)), dist
    test_error, dist = error(at, yt, wt)
    mean_pose = (y * w[..., None]).sum(0) / counts[:, None]
    baseline = float(((mean_pose[None] - yt).norm(dim=-1) * wt).sum() / wt.sum().clamp_min(1))
    per_joint = [float((dist[:, j] * wt[:, j]).sum() / wt[:, j].sum()) if wt[:, j].sum() > 0 else None
                 for j in range(wt.shape[1])]
    return {"error": test_error, "train_error": error(a, y, w)[0], "mean_pose_error": baseline,
            "per_joint": per_joint, "coef": coef.float()}


def load_landmarks(path) -> tuple[LandmarkNet, artifacts.Checkpoint]:
    """A landmark checkpoint's network in eval mode (weights checked against the net its `arch` describes), and
    the checkpoint."""
    ckpt = artifacts.load_checkpoint(path, task=TASK)
    net = landmark_model_from_spec(ckpt.arch, path)
    artifacts.load_state(net, ckpt.model_state(), path)
    return net.eval(), ckpt

