"""Self-supervision from time: pretext tasks on clips (`dpl pretrain --data clips[:SOURCE] | moving:SOURCE |
clipfolder:PATH`), each training the registry backbone read through `Pretext.embed` (its feature vector per frame).

    order        Shuffle and Learn (Misra et al., ECCV'16): a tuple of 3 frames (a, b, c), a < b < c the ends and a
                 middle frame of a window of `tuple_window` frames, shown in order (a, b, c) or reversed (c, b, a), both
                 positive as in the paper, or with the middle replaced by a frame b' outside the window ((a, b', c), the
                 paper's (b, a, d)/(b, e, d)), negative; half of each. Windows are drawn with probability proportional
                 to their motion, measured from pixels alone: `motion_profile` renders every clip once at the start and
                 keeps the mean absolute difference of each frame from the one before, an (N, T) array. The 3 frame
                 embeddings concatenated -> MLP -> 2 classes, cross-entropy.
    odd-one-out  Fernando et al. (CVPR'17): `sequences` sequences of `sequence_frames` frames of one clip (each its own
                 start and stride), all in temporal order but one, whose frames are shuffled by a permutation that is
                 neither the identity nor its reverse. Each sequence is encoded by the sum of differences of consecutive
                 frame embeddings (the paper's SoD; it equals the last embedding less the first, so a shuffle that keeps
                 both ends, such as (0, 2, 1, 3), is not seen by it), the encodings concatenated -> MLP -> which one is
                 odd, cross-entropy.
    tracking     Wang & Gupta (ICCV'15): a query patch at frame t, placed where the frame differs from the one before
                 (`moving_box`: a box drawn with probability growing with its moving pixels), its positive the same
                 region `track_gap` frames later as a tracker finds it from pixels alone (`track`: template matching
                 by normalized cross-correlation within a search window, frame to frame, by a grouped conv2d on the
                 device; never the generator's truth), its negative a random patch of another clip of the batch. The
                 patches' embeddings through a projection head; the triplet ranking loss
                 max(0, D(q, pos) - D(q, neg) + margin) with D = 1 - cos (`triplet_cosine`); `acc` is the share of
                 triplets with D(q, pos) < D(q, neg).

A step samples B clips (`--batch-size`), draws its questions from their lengths and motion (`Questions`: frame times,
labels and uniforms, all from a numpy stream seeded by (seed, epoch, step), so a resumed run asks the same) and renders
only the frames asked for (`ClipSet.frames`), by DataLoader workers where there are some (`Feed`). The sampling
functions (`order_tuples`, `odd_sequences`, `track_times`, `moving_box`, `track`) are plain functions of (lengths,
motion or frames, rng) that tests call on planted clips. After training, the same questions on held-out clips measure
the task (`held_out`), recorded as the checkpoint's `pretext_test_acc`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ... import DplError, models
from ...data import augment
from ...data.clips import ClipSet, check_length
from ...engine.runtime import Feed
from ...engine.sampling import shuffled_batches, steps_per_epoch
from ...engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything
from ..common import ModelOptions, Trained, checkpoint_meta, make_model, train_record
from .training import Pretext, PretextOptions, Task, mlp

NORM_FRAMES = 256           # frames (spread over the clips) that estimate the clips' mean and std
HELD_OUT_ROUNDS = 4         # questions per held-out clip


# ---- the clips as what a backbone is built for ------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ClipFrames:
    """The frames of a clip set as `make_model`, `checkpoint_meta` and the tasks read a `Dataset`: no classes (the
    backbone gets a one-class head that fine-tuning replaces), the frames' shape, their normalization from a sample
    of frames, the clips' data record."""

    clips: ClipSet
    record: dict | None = None            # the data record, where not the clips' own
    classes: list[str] = field(default_factory=list)
    num_classes: int = 0
    hflip: bool = False

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.clips.shape

    @property
    def spec(self) -> str:
        return self.clips.spec

    @cached_property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return frame_normalization(self.clips)

    def describe(self) -> dict:
        return self.clips.record if self.record is None else self.record


def frame_normalization(clips: ClipSet, sample: int = NORM_FRAMES) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of up to `sample` frames spread over the clips and their times (deterministic)."""
    k = min(sample, int(clips.lengths.sum()))
    rows = np.linspace(0, len(clips) - 1, k).round().astype(np.int64)
    times = (np.arange(k) * 7919) % clips.lengths[rows]               # times spread over each clip's length
    x = clips.frames(rows, times[:, None])[:, 0].float().div_(255)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def motion_profile(clips: ClipSet, chunk: int = 32) -> np.ndarray:
    """float32 (N, T) with T the longest clip: [i, t] the mean absolute difference (0-255) of frame t of clip i from
    frame t - 1, over its pixels and channels; 0 at t = 0 and past the clip's end. Every clip is rendered once, a
    `chunk` of clips of one length at a time; only the profile is kept."""
    n = len(clips)
    out = np.zeros((n, int(clips.lengths.max()) if n else 0), dtype=np.float32)
    for length in np.unique(clips.lengths):
        rows = np.flatnonzero(clips.lengths == length)
        for start in range(0, len(rows), chunk):
            at = rows[start:start + chunk]
            x = clips.frames(at, np.tile(np.arange(length), (len(at), 1))).float()
            out[at, 1:length] = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(2, 3, 4)).numpy()
    return out


# ---- questions: what a step asks of each clip --------------------------------------------------------------------

class Questions(NamedTuple):
    """A step's questions, one per clip: the frames to render (times (n, m)), the answers (labels, int64 (n,) or
    (n, k)) and uniforms in [0, 1) that the task's step reads where it draws from the frames (float32 (n, k))."""

    times: np.ndarray
    labels: np.ndarray
    uniforms: np.ndarray


def order_tuples(lengths: np.ndarray, motion: np.ndarray, rows: np.ndarray, window: int, rng: np.random.Generator,
                 positive: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle and Learn's tuples, one per clip row: times (n, 3) and labels (n,), 1 in order, 0 not. A window of
    `window` frames starting at s is drawn with probability proportional to the motion inside it (motion[s+1 ..
    s+window-1]; uniform over a still clip); a, c are its ends and b a frame strictly between. Positive (with
    probability `positive`): (a, b, c) or (c, b, a); negative: b replaced by a frame outside [a, c], (a, b', c) or
    (c, b', a). Clips need window + 1 frames."""
    rows = np.asarray(rows, dtype=np.int64)
    times, labels = np.empty((len(rows), 3), dtype=np.int64), np.empty(len(rows), dtype=np.int64)
    for j, i in enumerate(rows):
        length = int(lengths[i])
        if length < window + 1:
            raise DplError(f"clip {i} has {length} frames; an order tuple over {window} frames needs {window + 1}")
        inside = np.convolve(motion[i, 1:length], np.ones(window - 1), mode="valid")        # (length - window + 1,)
        p = inside + 1e-6 * max(float(inside.max()), 1e-6)
        s = int(rng.choice(len(p), p=p / p.sum()))
        a, c = s, s + window - 1
        label = int(rng.random() < positive)
        if label:
            b = int(rng.integers(a + 1, c))
        else:
            outside = np.concatenate([np.arange(0, a), np.arange(c + 1, length)])
            b = int(rng.choice(outside))
        times[j] = (a, b, c) if rng.random() < 0.5 else (c, b, a)
        labels[j] = label
    return times, labels


def odd_permutation(frames: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of `frames` (3 or more) that is neither the identity nor its reverse."""
    if frames < 3:
        raise DplError(f"a shuffled sequence needs at least 3 frames, got {frames}")
    while True:
        p = rng.permutation(frames)
        if (np.diff(p) != 1).any() and (np.diff(p) != -1).any():
            return p


def odd_sequences(lengths: np.ndarray, rows: np.ndarray, sequences: int, frames: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Fernando et al.'s questions, one per clip row: times (n, sequences, frames) and the odd sequence's index (n,).
    Each sequence has its own stride (1 .. (T-1)//(frames-1)) and start; all are in temporal order but the odd one,
    whose frames are shuffled by `odd_permutation`. Clips need `frames` frames."""
    rows = np.asarray(rows, dtype=np.int64)
    times = np.empty((len(rows), sequences, frames), dtype=np.int64)
    odd = rng.integers(0, sequences, len(rows))
    for j, i in enumerate(rows):
        length = int(lengths[i])
        if length < frames:
            raise DplError(f"clip {i} has {length} frames; a sequence of {frames} frames needs them")
        for k in range(sequences):
            stride = int(rng.integers(1, (length - 1) // (frames - 1) + 1))
            start = int(rng.integers(0, length - stride * (frames - 1)))
            times[j, k] = start + stride * np.arange(frames)
        times[j, odd[j]] = times[j, odd[j], odd_permutation(frames, rng)]
    return times, odd


def track_times(lengths: np.ndarray, motion: np.ndarray, rows: np.ndarray, gap: int, rng: np.random.Generator
                ) -> np.ndarray:
    """Frames t - 1, t, ..., t + gap of each clip row (n, gap + 2): the query's frame t drawn with probability
    proportional to its motion (motion[t], its difference from t - 1; uniform over a still clip). Clips need gap + 2
    frames."""
    rows = np.asarray(rows, dtype=np.int64)
    times = np.empty((len(rows), gap + 2), dtype=np.int64)
    for j, i in enumerate(rows):
        length = int(lengths[i])
        if length < gap + 2:
            raise DplError(f"clip {i} has {length} frames; a track over {gap} frames needs {gap + 2}")
        m = motion[i, 1:length - gap]                       # candidates t = 1 .. length - 1 - gap
        p = m + 1e-6 * max(float(m.max()), 1e-6)
        t = 1 + int(rng.choice(len(p), p=p / p.sum()))
        times[j] = np.arange(t - 1, t + gap + 1)
    return times


def moving_box(prev: torch.Tensor, cur: torch.Tensor, size: int, u: torch.Tensor) -> torch.Tensor:
    """Top-left corners (n, 2) as (y, x) of size x size boxes of `cur` (n, C, H, W) placed where it differs from
    `prev`: a box's score is its mean absolute difference less the median over boxes (the still background's), and
    the boxes scoring within a quarter of the best are drawn with weight growing from 0 there to 1 at the best; `u`
    (n,) uniforms pick one by inverse CDF (every box alike where nothing moves)."""
    diff = (cur.float() - prev.float()).abs().mean(1, keepdim=True)
    score = F.avg_pool2d(diff, size, stride=1)[:, 0]                    # (n, H - size + 1, W - size + 1)
    flat = score.flatten(1)
    flat = flat - flat.median(1, keepdim=True).values
    w = (flat - 0.75 * flat.max(1, keepdim=True).values).clamp_min(0)
    w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
    cdf = w.cumsum(1)
    idx = torch.searchsorted(cdf, (u.to(cdf)[:, None] * cdf[:, -1:]).contiguous(), right=True)
    idx = idx.clamp_max(flat.shape[1] - 1)[:, 0]
    return torch.stack([idx // score.shape[2], idx % score.shape[2]], 1)


def crop(frames: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(n, C, size, size): the boxes (n, 2) top-left (y, x) of frames (n, C, H, W), inside the frame."""
    ar = torch.arange(size, device=frames.device)
    rows, cols = boxes[:, 0, None] + ar, boxes[:, 1, None] + ar
    n = torch.arange(len(frames), device=frames.device)[:, None, None]
    return frames[n, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def ncc(windows: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """Normalized cross-correlation of each template (n, C, P, P) at every place in its window (n, C, L, L): (n, L-P+1,
    L-P+1) in [-1, 1], over the C*P*P values; one grouped conv2d for the batch."""
    n, c, p, _ = templates.shape
    t = templates - templates.mean((1, 2, 3), keepdim=True)
    cov = F.conv2d(windows.reshape(1, n * c, *windows.shape[2:]), t, groups=n)[0] / (c * p * p)
    mean_w = F.avg_pool2d(windows, p, stride=1).mean(1)
    var_w = (F.avg_pool2d(windows.square(), p, stride=1).mean(1) - mean_w.square()).clamp_min(0)
    var_t = t.square().mean((1, 2, 3))
    return cov / (var_w * var_t[:, None, None] + 1e-10).sqrt()


def track(frames: torch.Tensor, start: torch.Tensor, size: int, radius: int) -> torch.Tensor:
    """Boxes (n, m, 2), top-left (y, x), of a size x size region through frames (n, m, C, H, W), from `start` (n, 2)
    in frame 0: in each next frame, the place within +-radius pixels of the last box whose normalized
    cross-correlation with the last box's pixels is highest (boxes stay inside the frame; a tie stays put)."""
    with torch.autocast(frames.device.type, enabled=False):
        frames = frames.float() / 255
        n, m, _, h, w = frames.shape
        span, offsets = size + 2 * radius, torch.arange(-radius, radius + 1, device=frames.device)
        boxes = [start.long()]
        for j in range(1, m):
            last = boxes[-1]
            template = crop(frames[:, j - 1], last, size)
            windows = crop(F.pad(frames[:, j], (radius,) * 4), last, span)          # padded: the window starts at last
            score = ncc(windows, template)
            ys, xs = last[:, 0, None] + offsets, last[:, 1, None] + offsets
            inside = ((ys >= 0) & (ys <= h - size))[:, :, None] & ((xs >= 0) & (xs <= w - size))[:, None, :]
            score = score.masked_fill(~inside, -torch.inf)
            score[:, radius, radius] += 1e-6
            best = score.flatten(1).argmax(1)
            boxes.append(torch.stack([ys.gather(1, (best // (2 * radius + 1))[:, None])[:, 0],
                                      xs.gather(1, (best % (2 * radius + 1))[:, None])[:, 0]], 1))
        return torch.stack(boxes, 1)


def triplet_cosine(query: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Wang & Gupta's ranking loss, mean of max(0, D(q, p) - D(q, n) + margin) with D(a, b) = 1 - cos(a, b), and the
    share of triplets with D(q, p) < D(q, n)."""
    q, p, n = (x.float() for x in (query, positive, negative))
    d_pos, d_neg = 1 - F.cosine_similarity(q, p, dim=1), 1 - F.cosine_similarity(q, n, dim=1)
    return (d_pos - d_neg + margin).clamp_min(0).mean(), (d_pos < d_neg).float().mean()


# ---- the tasks ---------------------------------------------------------------------------------------------------

class ClipTask(Task):
    """A pretext task on clips: `sample` asks each clip of a step a question (frames to render, answers), `step`
    answers it from the rendered frames (uint8 (n, m, C, S, S) on the device)."""

    uses_motion = False                 # whether `sample` reads the motion profile (rendered once at the start)

    @classmethod
    def frames_needed(cls, opts: PretextOptions) -> int:
        raise NotImplementedError

    def sample(self, lengths: np.ndarray, motion: np.ndarray | None, rows: np.ndarray, rng: np.random.Generator
               ) -> Questions:
        raise NotImplementedError

    def step(self, net: Pretext, x: torch.Tensor, labels: torch.Tensor, uniforms: torch.Tensor) -> tuple[dict, dict]:
        raise NotImplementedError

    def embed_frames(self, net: Pretext, x: torch.Tensor) -> torch.Tensor:
        """(n, m, C, S, S) uint8 -> (n, m, width): each frame's feature vector."""
        n, m = x.shape[:2]
        return net.embed(self.inputs(x.flatten(0, 1))).reshape(n, m, -1)

    def record(self) -> dict:
        return {"frames_needed": self.frames_needed(self.opts)}


class Order(ClipTask):
    name = "order"
    uses_motion = True

    @classmethod
    def frames_needed(cls, opts):
        return opts.tuple_window + 1

    def head(self, width):
        return mlp(3 * width, self.opts.head_width, 2)

    def sample(self, lengths, motion, rows, rng):
        times, labels = order_tuples(lengths, motion, rows, self.opts.tuple_window, rng)
        return Questions(times, labels, np.zeros((len(rows), 0), dtype=np.float32))

    def step(self, net, x, labels, uniforms):
        return self.classified(net.head(self.embed_frames(net, x).flatten(1)), labels)

    def record(self):
        return {**super().record(), "tuple_window": self.opts.tuple_window, "positive": 0.5, "reversed": True,
                "windows": "by motion"}


class OddOneOut(ClipTask):
    name = "odd-one-out"

    @classmethod
    def frames_needed(cls, opts):
        return opts.sequence_frames

    def head(self, width):
        return mlp(self.opts.sequences * width, self.opts.head_width, self.opts.sequences)

    def sample(self, lengths, motion, rows, rng):
        times, odd = odd_sequences(lengths, rows, self.opts.sequences, self.opts.sequence_frames, rng)
        return Questions(times.reshape(len(rows), -1), odd, np.zeros((len(rows), 0), dtype=np.float32))

    def step(self, net, x, labels, uniforms):
        n, q, f = len(x), self.opts.sequences, self.opts.sequence_frames
        e = self.embed_frames(net, x).reshape(n, q, f, -1)
        sod = (e[:, :, 1:] - e[:, :, :-1]).sum(2)                # Fernando et al.'s sum of differences
        return self.classified(net.head(sod.flatten(1)), labels)

    def record(self):
        return {**super().record(), "sequences": self.opts.sequences, "sequence_frames": self.opts.sequence_frames,
                "encoding": "sum of differences"}


class Tracking(ClipTask):
    name = "tracking"
    uses_motion = True

    def __init__(self, opts, ds, rt, seed):
        super().__init__(opts, ds, rt, seed)
        self.box = max(4, self.size // 2)                           # the side of a tracked patch in the frame
        self.patch_size = opts.patch_size or self.box                # the side the backbone sees it at
        self.radius = max(2, self.box // 4)                          # search window: +- pixels a frame
        if self.box > self.size:
            raise DplError(f"{ds.spec}: frames of {self.size} px are too small to track patches in")

    @classmethod
    def frames_needed(cls, opts):
        return opts.track_gap + 2

    def head(self, width):
        return mlp(width, self.opts.head_width, self.opts.projection_dim)

    def sample(self, lengths, motion, rows, rng):
        times = track_times(lengths, motion, rows, self.opts.track_gap, rng)
        n = len(rows)
        if n < 2:
            raise DplError("tracking's negatives come from another clip: a step needs at least 2 clips")
        other = rng.integers(1, n, n)                                # the negative's clip: row (j + other) mod n
        corner = rng.integers(0, self.size - self.box + 1, (n, 2))   # the negative's box
        return Questions(times, np.concatenate([other[:, None], corner], 1), rng.random((n, 1), dtype=np.float32))

    def patches(self, x: torch.Tensor, labels: torch.Tensor, uniforms: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, positive and negative patches (n, C, box, box) uint8 of rendered frames (n, gap + 2, C, S, S)."""
        start = moving_box(x[:, 0], x[:, 1], self.box, uniforms[:, 0])
        boxes = track(x[:, 1:], start, self.box, self.radius)
        n = len(x)
        other = (torch.arange(n, device=x.device) + labels[:, 0]) % n
        return (crop(x[:, 1], start, self.box), crop(x[:, -1], boxes[:, -1], self.box),
                crop(x[other, -1], labels[:, 1:], self.box))

    def step(self, net, x, labels, uniforms):
        q, p, neg = self.patches(x, labels, uniforms)
        n = len(q)
        z = net.head(self.embed_patches(net, torch.cat([q, p, neg])))
        loss, acc = triplet_cosine(z[:n], z[n:2 * n], z[2 * n:], self.opts.margin)
        return {"triplet": loss}, {"acc": acc}

    def embed_patches(self, net: Pretext, patches: torch.Tensor) -> torch.Tensor:
        x = augment.to_input(patches, self.mean, self.std)
        if self.box != self.patch_size:
            x = F.interpolate(x, size=(self.patch_size, self.patch_size), mode="bilinear", align_corners=False)
        if self.rt.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return net.embed(x)

    def record(self):
        return {**super().record(), "track_gap": self.opts.track_gap, "margin": self.opts.margin,
                "box": self.box, "patch_size": self.patch_size, "search_radius": self.radius,
                "projection_dim": self.opts.projection_dim, "tracker": "normalized cross-correlation"}


TEMPORAL: tuple[type[ClipTask], ...] = (Order, OddOneOut, Tracking)


def frames_needed(opts: PretextOptions) -> int:
    """The frames a clip needs for the task's questions."""
    return _clip_task(opts.task).frames_needed(opts)


def _clip_task(name: str) -> type[ClipTask]:
    for task in TEMPORAL:
        if task.name == name:
            return task
    raise DplError(f"--task {name} learns from images, not clips; on clips: {', '.join(t.name for t in TEMPORAL)}")


# ---- training -------------------------------------------------------------------------------------------------

def clip_batches(task: ClipTask, clips: ClipSet, motion: np.ndarray | None, batch_size: int, seed: int,
                 rt: Runtime):
    """`batches(epoch)` for fit: each step's clip rows in `shuffled_batches`' order, its questions drawn from a numpy
    stream of (seed, epoch, step), and their frames rendered (inline, or by DataLoader workers: `Feed`)."""
    feed = Feed(rt, rt.loader_workers(0, streamed=True), ())

    def questions(epoch):
        for index, rows in enumerate(shuffled_batches(len(clips), batch_size, seed, epoch, torch.device("cpu"))):
            rows = rows.numpy()
            q = task.sample(clips.lengths, motion, rows, np.random.default_rng([seed, epoch, index]))
            yield (torch.from_numpy(rows), torch.from_numpy(q.times), torch.from_numpy(q.labels),
                   torch.from_numpy(q.uniforms))

    def render(batch, *_):
        rows, times = batch[0], batch[1]
        return clips.frames(rows.cpu().numpy(), times.cpu().numpy().reshape(len(rows), -1))

    return lambda epoch: feed(questions(epoch), render)


def clip_objective(task: ClipTask, net: Pretext):
    """The step: the task's answer to a step's questions, from their rendered frames."""
    def step(batch):
        (_, _, labels, uniforms), x = batch
        return task.step(net, x, labels.to(x.device), uniforms.to(x.device))
    return step


def held_out(task: ClipTask, net: Pretext, clips: ClipSet, rt: Runtime, seed: int, batch_size: int,
             rounds: int = HELD_OUT_ROUNDS) -> dict:
    """The task's accuracy on held-out clips in eval mode: `rounds` questions per clip from a fixed stream, asked in
    batches of up to `batch_size` clips (at least 2 each, for tracking's negatives)."""
    motion = motion_profile(clips) if task.uses_motion else None
    rng = np.random.default_rng([seed, 1_000_003])
    parts = max(1, min(len(clips) // 2, -(-len(clips) // batch_size)))
    correct, asked, loss = 0.0, 0, 0.0
    was = net.training
    net.eval()
    try:
        with torch.no_grad(), rt.autocast():
            for _ in range(rounds):
                for rows in np.array_split(np.arange(len(clips)), parts):
                    q = task.sample(clips.lengths, motion, rows, rng)
                    x = clips.frames(rows, q.times).to(rt.device)
                    terms, stats = task.step(net, x, torch.from_numpy(q.labels).to(rt.device),
                                             torch.from_numpy(q.uniforms).to(rt.device))
                    correct += float(stats["acc"]) * len(rows)
                    loss += float(sum(terms.values())) * len(rows)
                    asked += len(rows)
    finally:
        net.train(was)
    return {"acc": correct / asked, "loss": loss / asked, "questions": asked, "clips": len(clips)}


def pretrain_clips(clips: ClipSet, test: ClipSet | None, arch: str, opts: PretextOptions, cfg: TrainConfig,
                   rt: Runtime, on_progress: Progress | None = None, resume: ResumeSpec | None = None) -> Trained:
    """Train `arch` on clips with a temporal task (`opts.task`: order, odd-one-out, tracking); then measure the task
    on the held-out `test` clips (None: not measured). Clips shorter than the task needs are left out (the caller
    says so: `check_length`'s note). With cfg.epochs 0 nothing is trained."""
    kind = _clip_task(opts.task)
    clips, short = long_enough(clips, kind.frames_needed(opts), opts.task)
    batch_size = min(cfg.batch_size, len(clips))
    if batch_size < 2:
        raise DplError(f"{clips.spec}: pretraining on clips needs batches of at least 2 clips (batch norm; tracking's "
                       f"negatives), got {len(clips)} clip{'s' * (len(clips) != 1)}")
    seed_everything(cfg.seed)
    ds = ClipFrames(clips, record={**clips.record, **({"short": short} if short else {})})
    model, spec, _ = make_model(ModelOptions(arch=arch), ds)
    task = kind(opts, ds, rt, cfg.seed)
    width = model.get_submodule(models.feature_layer(model)).in_features
    net = rt.prepare(Pretext(model, task.head(width)))
    history, measured = [], None
    with net.taps:          # off at the end: the checkpoint's model runs whole
        if cfg.epochs:
            motion = motion_profile(clips) if task.uses_motion else None
            history = fit(net, clip_objective(task, net), clip_batches(task, clips, motion, batch_size, cfg.seed, rt),
                          steps_per_epoch(len(clips), batch_size), cfg, rt, on_progress, resume,
                          batch_images=batch_size)
        if test is not None:
            test, test_short = long_enough(test, kind.frames_needed(opts), opts.task)
            if len(test) >= 2:
                measured = {**held_out(task, net, test, rt, cfg.seed, batch_size), "short": test_short}
    last = history[-1] if history else {}
    metrics = {f"pretext_{k}": v for k, v in last.items() if k in ("loss", "acc", "ce", "triplet")}
    if measured is not None:
        metrics.update(pretext_test_acc=measured["acc"], pretext_test_loss=measured["loss"])
    meta = checkpoint_meta(
        spec, ds, [], cfg, train_record(cfg, batch_size, None, clips_per_step=batch_size), metrics, history,
        pretext={"task": opts.task, "head_width": opts.head_width, "feature_width": width, **task.record(),
                 **({"held_out": {"spec": test.spec, **{k: measured[k] for k in ("clips", "short", "questions")},
                                  "chance": chance(task)}} if measured is not None else {})})
    state = {f"head.{k}": v for k, v in net.head.state_dict().items()}
    return Trained(net.model.cpu(), meta, history, objective=state)


def long_enough(clips: ClipSet, need: int, task: str) -> tuple[ClipSet, int]:
    """The clips of at least `need` frames, and how many were shorter (`check_length`: refused when none is long
    enough; its note is the caller's to say)."""
    kept, _ = check_length(clips, need, f"--task {task}")
    return kept, len(clips) - len(kept)


def chance(task: ClipTask) -> float:
    """The accuracy of a guess: 1/2 for order and tracking, 1/sequences for odd-one-out."""
    return 1 / task.opts.sequences if isinstance(task, OddOneOut) else 0.5
