"""Teacher inference into label shards (`dpl label`), and the selection applied to them at distill time."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from dpl.core import DplError, artifacts, evaluate
from dpl.core.data import Dataset
from dpl.core.teach import check_input
from dpl.core.train import Progress, Runtime

MODES = ("hard", "soft", "topk")


@dataclass(frozen=True)
class LabelOptions:
    mode: str = "soft"
    topk: int | None = None
    tau: float = 1.0
    shard_size: int = 50_000
    batch_size: int = 512

    def check(self, num_classes: int) -> None:
        if self.mode not in MODES:
            raise DplError(f"unknown label mode {self.mode!r}; valid: {', '.join(MODES)}")
        if not self.tau > 0:
            raise DplError(f"--tau must be > 0, got {self.tau}")
        if self.mode == "topk" and not (self.topk and 1 <= self.topk <= num_classes):
            raise DplError(f"--topk must be between 1 and the {num_classes} classes, got {self.topk}")
        if self.shard_size < 1:
            raise DplError("--shard-size must be at least 1")


def teacher_probs(teachers: list[artifacts.Checkpoint], ds: Dataset, opts: LabelOptions, rt: Runtime,
                  on_progress: Progress | None = None) -> torch.Tensor:
    """Mean over teachers of softmax(logits / tau), each teacher un-noised (eval mode, no augmentation)."""
    emit = on_progress or (lambda e: None)
    emit({"event": "total", "total": len(ds) * len(teachers)})
    probs = None
    for ckpt in teachers:
        model = rt.prepare(ckpt.build_model())
        chunks = []
        for start in range(0, len(ds), opts.batch_size):
            logits = evaluate.predict(model, ds.images[start: start + opts.batch_size], ckpt.input, rt, opts.batch_size)
            chunks.append((logits / opts.tau).softmax(dim=1))
            emit({"event": "advance", "n": len(logits)})
        p = torch.cat(chunks)
        probs = p if probs is None else probs + p
    return probs / len(teachers)


def make_shards(probs: torch.Tensor, opts: LabelOptions) -> list[dict[str, torch.Tensor]]:
    confidence, label = probs.max(dim=1)
    shards = []
    for start in range(0, len(probs), opts.shard_size):
        sl = slice(start, start + opts.shard_size)
        shard = {"index": torch.arange(len(probs))[sl].to(torch.int64), "label": label[sl].to(torch.int64),
                 "confidence": confidence[sl].float()}
        if opts.mode == "soft":
            shard["probs"] = probs[sl].half()
        elif opts.mode == "topk":
            top = probs[sl].topk(opts.topk, dim=1)
            shard["topk_index"] = top.indices.to(torch.int32)
            shard["topk_prob"] = top.values.half()
        shards.append(shard)
    return shards


def label(teacher_paths: list[Path], ds: Dataset, opts: LabelOptions, rt: Runtime,
          on_progress: Progress | None = None) -> tuple[list[dict], dict, dict | None]:
    """Run the teacher(s) over `ds`; returns shards, folder metadata, and label quality where ds has truth."""
    if len(ds) == 0:
        raise DplError(f"{ds.spec} ({ds.part}): no samples to label")
    teachers = [artifacts.load_checkpoint(p) for p in teacher_paths]
    for p, t in zip(teacher_paths, teachers):
        check_input(t, ds, p)
    opts.check(ds.num_classes)
    probs = teacher_probs(teachers, ds, opts, rt, on_progress)
    shards = make_shards(probs, opts)
    meta = {
        "teachers": [{"role": "teacher", "path": str(p), "sha256": t.sha256()} for p, t in zip(teacher_paths, teachers)],
        "data": ds.describe(), "tau": opts.tau, "mode": opts.mode, "topk": opts.topk,
        "num_classes": ds.num_classes, "classes": ds.classes, "total": len(ds), "world": 1,
    }
    quality = None
    if (ds.labels >= 0).all():
        confidence, predicted = probs.max(dim=1)
        quality = evaluate.label_quality(predicted, confidence, ds.labels)
        meta["quality"] = quality
    return shards, meta, quality


def write_folder(folder: Path, shards: list[dict], meta: dict, force: bool) -> None:
    """Write the whole folder under a temporary name, then rename it into place."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        artifacts.write_labels(tmp, shards, meta)
        if folder.exists() and force:
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- selection at distill time: label once, distill many -------------------------------------------

def select(labels: artifacts.Labels, min_confidence: float | None = None, balance: int | None = None) -> torch.Tensor:
    """Rows of `labels` to train on: confidence filter, then per-class balancing to `balance` rows
    (the most confident when a class has more; its rows duplicated in turn when it has fewer)."""
    rows = torch.arange(len(labels))
    if min_confidence is not None:
        rows = rows[labels.confidence[rows] >= min_confidence]
        if len(rows) == 0:
            raise DplError(f"{labels.path}: no pseudo-label has confidence >= {min_confidence}")
    if balance is not None:
        if balance < 1:
            raise DplError("--balance must be at least 1")
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


def soft_targets(labels: artifacts.Labels, rows: torch.Tensor, tau: float, hard: bool) -> torch.Tensor:
    """Dense float targets (len(rows), C) at temperature `tau`, re-tempered from the stored ones.

    Stored probabilities were made at the labels' tau t0; p ** (t0 / tau), renormalised, is exactly
    softmax(logits / tau) for full probabilities (and for top-k, within the top k).
    """
    c = labels.num_classes
    if hard or labels.mode == "hard":
        return torch.nn.functional.one_hot(labels.label[rows], c).float()
    if labels.mode == "soft":
        p = labels.probs[rows].float()
    else:
        p = torch.zeros(len(rows), c, device=rows.device).scatter_(1, labels.topk_index[rows].long(), labels.topk_prob[rows].float())
    power = labels.meta["tau"] / tau
    if power != 1.0:
        p = p.clamp_min(1e-12).pow(power) * (p > 0)
    return p / p.sum(dim=1, keepdim=True)
