"""Teacher inference into label shards (`dpl label`), and the selection applied to them at distill time."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import DplError, artifacts
from ..data import augment, images as image_files
from ..reporting import evaluate
from ..data import MAX_LISTED, Dataset
from .common import NoiseOptions, load_teachers
from ..engine.train import Progress, Runtime

MODES = ("hard", "soft", "topk")
MAX_VIEWS = 256


@dataclass(frozen=True, kw_only=True)
class LabelOptions:
    mode: str = "soft"
    topk: int | None = None
    tau: float = 1.0
    shard_size: int = 50_000
    batch_size: int = 512
    views: int | None = None        # K stored augmentations per sample and the teacher's output on each
    view_seed: int = 0
    view_noise: NoiseOptions = NoiseOptions()    # the views' crop and flip (RandAugment is not stored)

    def __post_init__(self):
        if self.mode not in MODES:
            raise DplError(f"unknown label mode {self.mode!r}; valid: {', '.join(MODES)}")
        if not 0 < self.tau < math.inf:
            raise DplError(f"--tau must be a finite number > 0, got {self.tau}")
        if (self.mode == "topk") != (self.topk is not None):
            raise DplError("--topk K stores soft labels as their top K classes; it goes with neither --hard nor "
                           "a mode other than topk")
        if self.shard_size < 1 or self.batch_size < 1:
            raise DplError("--shard-size and --batch-size must be at least 1")
        if self.views is not None:
            if not 1 <= self.views <= MAX_VIEWS:
                raise DplError(f"--views K stores K augmented views per sample: K must be in 1..{MAX_VIEWS}, "
                               f"got {self.views}")
            if self.mode == "hard":
                raise DplError("--views stores the teacher's class distribution on each view, and --hard keeps "
                               "none: give --views with --soft (the default) or --topk K")
            if not (self.view_noise.crop or self.view_noise.flip):
                raise DplError("--views with --no-crop and --no-flip would store K copies of the un-augmented "
                               "image's labels: keep a crop or a flip")

    def check_classes(self, num_classes: int) -> None:
        if self.mode == "topk" and not 1 <= self.topk <= num_classes:
            raise DplError(f"--topk must be between 1 and the {num_classes} classes, got {self.topk}")


def teacher_probs(teachers: list[tuple[nn.Module, dict]], images, opts: LabelOptions, rt: Runtime,
                  emit: Progress) -> torch.Tensor:
    """Mean over teachers of softmax(logits / tau), each teacher un-noised (eval mode, no augmentation).
    Each batch is decoded once for all teachers; rows of unreadable image files are NaN."""
    return head_probs(teachers, images, opts, rt, emit, [slice(None)])[0][0]


@dataclass(frozen=True)
class StoredViews:
    """The views of the samples being labeled: crop offsets (n, K, 2) after padding by `pad`, flips (n, K)."""

    pad: int
    offset: torch.Tensor
    flip: torch.Tensor

    def rows(self, start: int, stop: int) -> StoredViews:
        return StoredViews(self.pad, self.offset[start:stop], self.flip[start:stop])


def head_probs(teachers: list[tuple[nn.Module, dict]], images, opts: LabelOptions, rt: Runtime, emit: Progress,
               columns: list[slice], views: StoredViews | None = None
               ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """`teacher_probs` of each slice of the logits in `columns` (a multi-head student's heads, each its own
    softmax), from one forward pass per batch; with `views` (one per row of `images`), also the probabilities of
    every view, (n, K, C), each view a forward of its own batch."""
    k = 0 if views is None else views.offset.shape[1]
    chunks, readable = [[] for _ in columns], []
    with torch.inference_mode():
        for model, _ in teachers:
            model.eval()
        at = 0
        for x, ok in evaluate.device_batches(images, rt, opts.batch_size, rt.workers):
            inputs = [x] + [augment.view_of(x, views.pad, views.offset[at:at + len(x), v], views.flip[at:at + len(x), v])
                            for v in range(k)]
            at += len(x)
            probs = [[0] * len(columns) for _ in inputs]
            for model, input_meta in teachers:
                for p_view, x_view in zip(probs, inputs):
                    with rt.autocast():
                        logits = model(augment.to_input(x_view, input_meta["mean"], input_meta["std"], rt.cuda)).float()
                    p_view[:] = [p + (logits[:, cols] / opts.tau).softmax(dim=1) for p, cols in zip(p_view, columns)]
            for c, kept in enumerate(chunks):     # kept on the device: no wait for each batch
                kept.append(torch.stack([p_view[c] for p_view in probs], dim=1) / len(teachers))
            readable.append(ok)
            emit({"event": "advance", "n": len(ok) * len(teachers)})
    ok = torch.cat(readable).cpu()
    out = []
    for kept in chunks:
        probs = torch.cat(kept).float().cpu()       # (n, 1 + K, C)
        probs[~ok] = float("nan")
        out.append((probs[:, 0], probs[:, 1:] if k else None))
    return out


def shard_tensors(probs: torch.Tensor, start: int, opts: LabelOptions, keys: list[str] | None = None,
                  views: StoredViews | None = None, view_probs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One shard's tensors for samples start .. start + len(probs) - 1, less the unreadable (NaN) rows,
    whose positions go to `skipped`. Image files keep each sample's key beside its index. With `views` (these
    samples') and `view_probs` (n, K, C), each view's crop, flip and probabilities (or top k) too."""
    readable = ~probs.isnan().any(dim=1)
    positions = torch.arange(start, start + len(probs), dtype=torch.int64)
    probs = probs[readable]
    confidence, label = probs.max(dim=1)
    shard = {"index": positions[readable], "label": label.to(torch.int64), "confidence": confidence.float()}
    shard.update(_stored_probs(probs, opts))
    if views is not None:
        shard["view_offset"], shard["view_flip"] = views.offset[readable], views.flip[readable]
        shard.update({f"view_{name}": t for name, t in _stored_probs(view_probs[readable], opts).items()})
    if keys is not None:
        shard.update(artifacts.encode_keys([k for k, ok in zip(keys, readable.tolist()) if ok]))
        shard["skipped"] = positions[~readable]
    return shard


def _stored_probs(probs: torch.Tensor, opts: LabelOptions) -> dict[str, torch.Tensor]:
    """What the mode stores of probabilities (..., C): all of them (soft), the top k (topk), nothing (hard)."""
    if opts.mode == "soft":
        return {"probs": probs.half()}
    if opts.mode == "topk":
        top = probs.topk(opts.topk, dim=-1)
        return {"topk_index": top.indices.to(torch.int32), "topk_prob": top.values.half()}
    return {}


def rank_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous part of 0..n-1 that rank `rank` of `world` labels: every sample exactly once, no padding."""
    return rank * n // world, (rank + 1) * n // world


@dataclass(frozen=True)
class _Output:
    """A label folder being written: its common metadata, the columns of the logits it takes (a head's slice),
    and whether the data's own labels are its classes (then the pseudo-labels' quality is measured)."""

    folder: Path
    meta: dict
    columns: slice
    measured: bool


def label(teacher_paths: list[Path], ds: Dataset, opts: LabelOptions, rt: Runtime, folder: Path,
          rank: int = 0, world: int = 1, resume: bool = False, replace: list[Path] = (),
          on_progress: Progress | None = None) -> dict:
    """Label this rank's part of `ds` into `folder`, one shard file at a time (each written atomically).

    With `resume`, shards already in the folder with the same metadata are kept, not recomputed; the
    files in `replace` (an earlier run's shards) are removed once the inputs are known to be good.
    Returns what was done and, where the data has ground truth, the quality of this rank's pseudo-labels.
    """
    _check_world(ds, world)
    for p in teacher_paths:
        if artifacts.read_header(p, kind="checkpoint").meta.get("heads"):
            raise DplError(f"{p}: a multi-head student labels alone, a folder per head (dpl label STUDENT -o OUT/ "
                           "writes OUT/HEAD/)")
    checkpoints = load_teachers(teacher_paths, ds)
    # An unlabeled pool has no classes of its own: it takes the teacher's.
    num_classes, classes = checkpoints[0].num_classes, checkpoints[0].meta.get("classes") or ds.classes
    opts.check_classes(num_classes)
    meta = {
        "teachers": [{"role": "teacher", "path": str(p), "sha256": t.sha256()} for p, t in zip(teacher_paths, checkpoints)],
        "data": ds.describe(), "tau": opts.tau, "mode": opts.mode, "topk": opts.topk,
        "num_classes": num_classes, "classes": classes, "total": len(ds), "world": world,
    }
    views = None
    if opts.views:
        noise = opts.view_noise.for_data(ds)
        if not (noise.crop_pad or noise.hflip):
            raise DplError(f"--views: {ds.spec} takes no flip (its classes do not survive one), and --no-crop leaves "
                           "no crop: the views would all be the un-augmented image")
        offset, flip = augment.sample_views(len(ds), opts.views, noise.crop_pad, noise.hflip, opts.view_seed)
        views = StoredViews(noise.crop_pad, offset, flip)
        meta["views"] = {"format": artifacts.VIEW_FORMAT, "count": opts.views, "crop_pad": noise.crop_pad,
                         "hflip": noise.hflip, "size": ds.shape[1], "seed": opts.view_seed}
    return _label_into(checkpoints, [_Output(Path(folder), meta, slice(None), True)], ds, opts, rt, rank, world,
                       resume, replace, on_progress, views)[0]


def label_heads(student: Path, names: list[str] | None, ds: Dataset, opts: LabelOptions, rt: Runtime, root: Path,
                rank: int = 0, world: int = 1, resume: bool = False, replace: list[Path] = (),
                on_progress: Progress | None = None) -> list[dict]:
    """A multi-head student labels `ds` once into root/HEAD/ for each of its heads (`names`, else all): each
    an ordinary label folder of the head's classes, its teacher the student (and the head's name). Returns
    `label`'s summary per head, with its name and folder."""
    _check_world(ds, world)
    if opts.views:
        raise DplError(f"{student}: --views labels with one model or an ensemble; a multi-head student's heads "
                       "are labeled without views")
    ckpt = artifacts.load_checkpoint(student)
    if not ckpt.heads:
        raise DplError(f"{student}: a model with one output has no heads to label with (--head picks one of a "
                       "multi-head student's)")
    heads = [ckpt.head(n) for n in names] if names else ckpt.heads
    expected = (ckpt.input["channels"], ckpt.input["size"], ckpt.input["size"])
    if tuple(ds.shape) != expected:
        raise DplError(f"{student}: the model takes {'x'.join(map(str, expected))} images, "
                       f"{ds.spec} has {'x'.join(map(str, ds.shape))}")
    teacher = {"role": "teacher", "path": str(student), "sha256": ckpt.sha256()}
    outputs = []
    for h in heads:
        opts.check_classes(len(h["classes"]))
        meta = {"teachers": [{**teacher, "head": h["name"]}], "data": ds.describe(), "tau": opts.tau, "mode": opts.mode,
                "topk": opts.topk, "num_classes": len(h["classes"]), "classes": h["classes"], "total": len(ds),
                "world": world}
        outputs.append(_Output(Path(root) / h["name"], meta, slice(h["offset"], h["offset"] + len(h["classes"])),
                               ds.classes == h["classes"]))
    done = _label_into([ckpt], outputs, ds, opts, rt, rank, world, resume, replace, on_progress)
    return [{"head": h["name"], "folder": str(o.folder), **d} for h, o, d in zip(heads, outputs, done)]


def _check_world(ds: Dataset, world: int) -> None:
    if len(ds) < world:
        raise DplError(f"{ds.spec} ({ds.part}): {len(ds)} samples to label, fewer than the {world} shards asked for")


def _label_into(checkpoints: list[artifacts.Checkpoint], outputs: list[_Output], ds: Dataset, opts: LabelOptions,
                rt: Runtime, rank: int, world: int, resume: bool, replace: list[Path],
                on_progress: Progress | None, views: StoredViews | None = None) -> list[dict]:
    """The labeling loop of `label` and `label_heads`: each batch through the teachers once (and once per stored
    view), a shard series per output folder."""
    teachers = [(rt.prepare(c.build_model()), c.input) for c in checkpoints]
    for o in outputs:               # made once the teachers are built: a refused checkpoint leaves no folder
        o.folder.mkdir(parents=True, exist_ok=True)
    for stale in replace:
        stale.unlink(missing_ok=True)
    first, last = rank_range(len(ds), rank, world)
    starts = list(range(first, last, opts.shard_size))
    emit = on_progress or (lambda e: None)
    emit({"event": "total", "total": (last - first) * len(teachers)})
    found = [{"label": [], "confidence": [], "index": [], "skipped": [], "written": 0, "view_bytes": 0}
             for _ in outputs]
    for seq, start in enumerate(starts):
        stop = min(start + opts.shard_size, last)
        paths = [o.folder / artifacts.shard_name(rank, seq) for o in outputs]
        kept = [resume and artifacts.same_shard(p, "labels", artifacts.shard_meta(o.meta, rank, seq, len(starts),
                                                                                   stop - start))
                for p, o in zip(paths, outputs)]
        keys = None if ds.keys is None else [os.fsdecode(k) for k in ds.keys[start:stop]]
        shard_views = None if views is None else views.rows(start, stop)
        probs = _shard_probs(teachers, outputs, ds, start, stop, all(kept), opts, rt, emit, shard_views)
        for o, path, keep, (p, p_views), f in zip(outputs, paths, kept, probs, found):
            if keep:
                done = artifacts.load_tensors(artifacts.read_header(path, kind="labels"))
            else:
                done = shard_tensors(p, start, opts, keys, shard_views, p_views)
                bad = done.get("skipped", torch.zeros(0, dtype=torch.int64)).tolist()
                write_shard(o.folder, o.meta, rank, seq, len(starts), done, [keys[i - start] for i in bad])
                f["written"] += 1
            for k in ("label", "confidence", "index"):
                f[k].append(done[k])
            f["view_bytes"] += sum(t.numel() * t.element_size() for name, t in done.items() if name.startswith("view_"))
            f["skipped"].append(len(done.get("skipped", ())))
    return [_summary(o, f, ds, rank, world, last - first, len(starts)) for o, f in zip(outputs, found)]


def _shard_probs(teachers: list[tuple[nn.Module, dict]], outputs: list[_Output], ds: Dataset, start: int, stop: int,
                 all_kept: bool, opts: LabelOptions, rt: Runtime, emit: Progress, views: StoredViews | None
                 ) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """Each output's probabilities of samples start .. stop - 1 (and of their views), from one pass of the
    teachers; none where every output keeps its shard (the progress advances all the same)."""
    if all_kept:
        emit({"event": "advance", "n": (stop - start) * len(teachers)})
        return [(None, None)] * len(outputs)
    return head_probs(teachers, image_files.rows_of(ds.images, slice(start, stop)), opts, rt, emit,
                      [o.columns for o in outputs], views)


def _summary(o: _Output, f: dict, ds: Dataset, rank: int, world: int, samples: int, shards: int) -> dict:
    """What one output folder got from this rank, and where the data has ground truth, its pseudo-labels' quality."""
    quality = None
    truth = ds.labels[torch.cat(f["index"])] if f["index"] else ds.labels[:0]
    if o.measured and len(truth) and (truth >= 0).all():
        quality = evaluate.label_quality(torch.cat(f["label"]), torch.cat(f["confidence"]), truth)
    return {"rank": rank, "world": world, "samples": samples, "shards": shards, "written": f["written"],
            "kept": shards - f["written"], "total": len(ds), "skipped": sum(f["skipped"]) + len(ds.skipped),
            "quality": quality, **_views_summary(o, f)}


def _views_summary(o: _Output, f: dict) -> dict:
    """With views: their count and the storage they take per sample per view."""
    views = o.meta.get("views")
    rows = sum(len(i) for i in f["index"])
    if not views:
        return {}
    return {"views": views["count"], "view_bytes_per_sample_view": f["view_bytes"] / max(1, rows * views["count"])}


def write_shard(folder: Path, meta: dict, rank: int, seq: int, rank_shards: int, tensors: dict[str, torch.Tensor],
                skipped_files: list[str] = ()) -> Path:
    """Shard `seq` of rank `rank`'s `rank_shards` into the label folder, atomically. `meta` is the folder's
    common metadata; `tensors` come from shard_tensors; `skipped_files` name its unreadable image files."""
    path = Path(folder) / artifacts.shard_name(rank, seq)
    shard = artifacts.shard_meta(meta, rank, seq, rank_shards, len(tensors["index"]))
    artifacts.save(path, tensors, "labels", {**shard, "skipped_files": list(skipped_files)[:MAX_LISTED]})
    return path


def shard_files(folder: Path, rank: int | None = None) -> list[Path]:
    pattern = "shard-*.safetensors" if rank is None else f"shard-{rank:05d}-*.safetensors"
    return sorted(Path(folder).glob(pattern))


# ---- reading labels against data, and the selection at distill time: label once, distill many -------------------------------------------

def check_labels_fit(labels: artifacts.Labels, pseudo: Dataset) -> torch.Tensor:
    """Where each label row's sample sits in `pseudo`. Labels of image files find their samples by key, so a
    pool that grew or was listed anew still fits; other labels need the very data they were made for."""
    if pseudo.num_classes and labels.num_classes != pseudo.num_classes:
        raise DplError(f"{labels.path}: labels have {labels.num_classes} classes, the data {pseudo.num_classes}")
    if labels.keys is not None and pseudo.keys is not None:
        order = np.argsort(pseudo.keys, kind="stable")
        ranked = pseudo.keys[order]
        at = np.clip(np.searchsorted(ranked, labels.keys), 0, len(ranked) - 1)
        found = ranked[at] == labels.keys
        if not found.all():
            missing = labels.keys[~found]
            raise DplError(f"{labels.path}: {len(missing)} of its {len(labels)} labeled samples are not in "
                           f"{pseudo.spec} ({pseudo.part}, {len(pseudo)} samples; first missing: "
                           f"{missing[0].decode(errors='backslashreplace')!r}): the labels were made for another pool")
        return torch.from_numpy(order[at])
    made_for = labels.meta["data"]
    if made_for.get("fingerprint") != pseudo.fingerprint():
        raise DplError(f"{labels.path}: labels were made for {made_for.get('spec')} ({made_for.get('part')}, "
                       f"{made_for.get('n')} samples, fingerprint {str(made_for.get('fingerprint'))[:12]}), "
                       f"not for {pseudo.spec} ({pseudo.part}, {len(pseudo)} samples, "
                       f"fingerprint {pseudo.fingerprint()[:12]})")
    return labels.index


def select(labels: artifacts.Labels, min_confidence: float | None = None, balance: int | None = None) -> torch.Tensor:
    """Rows of `labels` to train on: confidence filter, then per-class balancing to `balance` rows
    (the most confident when a class has more; its rows duplicated in turn when it has fewer).
    Rows index the label arrays; labels.index[rows] are the samples."""
    rows = torch.arange(len(labels))
    if min_confidence is not None:
        rows = rows[labels.confidence[rows] >= min_confidence]
        if len(rows) == 0:
            raise DplError(f"{labels.path}: no pseudo-label has confidence >= {min_confidence}")
    if balance is not None:
        picked = []
        for c in range(labels.num_classes):
            members = rows[labels.label[rows] == c]
            if len(members) == 0:
                continue
            members = members[torch.argsort(labels.confidence[members], descending=True, stable=True)]
            repeats = -(-balance // len(members))
            picked.append(members.repeat(repeats)[:balance])
        rows = torch.cat(picked)
    return rows


def soft_targets(labels: artifacts.Labels, rows: torch.Tensor, tau: float, hard: bool,
                 view: torch.Tensor | None = None) -> torch.Tensor:
    """Dense float targets (len(rows), C) at temperature `tau`, re-tempered from the stored ones; with `view`
    (one per row), those of that stored view of each row's sample.

    Stored probabilities were made at the labels' tau t0; p ** (t0 / tau), renormalised, is exactly
    softmax(logits / tau) for full probabilities (and for top-k, within the top k).
    """
    c = labels.num_classes
    if labels.mode == "hard" or (hard and view is None):
        return torch.nn.functional.one_hot(labels.label[rows], c).float()
    stored = labels if view is None else labels.views
    at = rows if view is None else (rows, view)
    if labels.mode == "soft":
        p = stored.probs[at].float()
    else:
        p = torch.zeros(len(rows), c, device=rows.device).scatter_(1, stored.topk_index[at].long(),
                                                                   stored.topk_prob[at].float())
    if hard:            # a view's hard target: its own argmax
        return torch.nn.functional.one_hot(p.argmax(dim=1), c).float()
    power = labels.meta["tau"] / tau
    if power != 1.0:
        p = p.clamp_min(1e-12).pow(power) * (p > 0)
    return p / p.sum(dim=1, keepdim=True)
