"""Knowledge distillation and Noisy Student training (`dpl distill`).

A student learns from true labels on the labeled set and from teacher targets on the pseudo-labeled set,
which come either from stored label shards (offline: the teacher never runs) or from live teachers
(online: their forward on the same augmented batch). Loss, per Hinton et al.:

    labeled:     H(y, P_S) + alpha * tau^2 * H(P_T^tau, P_S^tau)    (the second term only with --teacher)
    unlabeled:   unlabeled_weight * tau^2 * H(P_T^tau, P_S^tau)     (H(argmax P_T, P_S) with hard targets)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dpl.core import DplError, artifacts, augment, distributed, evaluate, label
from dpl.core.data import Dataset
from dpl.core.teach import ModelOptions, NoiseOptions, Trained, check_input, make_model, train_record
from dpl.core.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything


@dataclass(frozen=True)
class DistillOptions:
    tau: float | None = None            # None: the labels' own tau offline, 1 online
    alpha: float = 1.0                  # weight of the KD term on labeled samples (online teachers only)
    unlabeled_weight: float = 1.0
    unlabeled_ratio: float = 3.0        # pseudo-labeled samples per labeled sample in each batch
    hard: bool = False
    min_confidence: float | None = None
    balance: int | None = None

    def check(self) -> None:
        if self.tau is not None and not 0 < self.tau < math.inf:
            raise DplError(f"--tau must be a finite number > 0, got {self.tau}")
        if self.alpha < 0 or self.unlabeled_weight < 0:
            raise DplError("--alpha and --unlabeled-weight must be >= 0")
        if not self.unlabeled_ratio > 0:
            raise DplError(f"--unlabeled-ratio must be > 0, got {self.unlabeled_ratio}")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * H(targets, softmax(logits / tau)), averaged over the batch, less the targets' own entropy
    (a constant: the gradient is that of H, and the value reads 0 when the student matches)."""
    log_q = F.log_softmax(logits.float() / tau, dim=1)
    return (torch.xlogy(targets, targets) - targets * log_q).sum(dim=1).mean() * tau * tau


class Teachers:
    """Frozen, un-noised teachers (eval mode, not trained); their mean softmax at temperature tau."""

    def __init__(self, checkpoints: list[artifacts.Checkpoint], rt: Runtime):
        self.nets = [rt.prepare(c.build_model()).eval().requires_grad_(False) for c in checkpoints]
        self.inputs = [c.input for c in checkpoints]
        self.rt = rt

    @torch.no_grad()
    def probs(self, x_uint8: torch.Tensor, tau: float) -> torch.Tensor:
        total = 0
        for net, inp in zip(self.nets, self.inputs):
            logits = net(augment.to_input(x_uint8, inp["mean"], inp["std"], self.rt.cuda))
            total = total + (logits.float() / tau).softmax(dim=1)
        return total / len(self.nets)


def _stream(n: int, count: int, seed: int, epoch: int, device) -> torch.Tensor:
    """`count` indices of 0..n-1: successive seeded permutations, so every sample recurs evenly.
    Under torchrun, each rank takes its own slice of the shared stream."""
    rank, world = distributed.rank_world()
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch * 7919 + 1)
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(count * world / n))]
    return torch.cat(perms)[: count * world][rank::world].to(device)


def _gather_parts(batch, labeled_images, pseudo_images, sample_of_row) -> torch.Tensor:
    il, iu = batch
    parts = [] if il is None else [labeled_images[il]]
    if iu is not None:
        parts.append(pseudo_images[sample_of_row[iu]])
    return torch.cat(parts)


def distill(labeled: Dataset | None, pseudo: Dataset | None, labels: artifacts.Labels | None,
            teacher_paths: list[Path], model_opts: ModelOptions, noise_opts: NoiseOptions,
            opts: DistillOptions, cfg: TrainConfig, rt: Runtime, test: Dataset | None = None,
            on_progress: Progress | None = None, resume: ResumeSpec | None = None) -> Trained:
    opts.check()
    if labels is None and not teacher_paths:
        raise DplError("distill needs --labels DIR or --teacher CKPT (dpl teach trains on labels alone)")
    if (opts.min_confidence is not None or opts.balance is not None) and labels is None:
        raise DplError("--min-confidence and --balance select among stored labels: give --labels")
    base = labeled if labeled is not None else pseudo
    teachers_ckpt = [artifacts.load_checkpoint(p) for p in teacher_paths]
    for p, t in zip(teacher_paths, teachers_ckpt):
        check_input(t, base, p)
    if labeled is not None and (labeled.labels < 0).any():
        raise DplError(f"{labeled.spec}: the labeled part has samples without labels")
    for ds in (labeled, pseudo):
        if ds is not None and len(ds) == 0:
            raise DplError(f"{ds.spec} ({ds.part}): no samples")
    positions = check_labels_fit(labels, pseudo) if pseudo is not None and labels is not None else None
    if labeled is not None and pseudo is not None and labeled.shape != pseudo.shape:
        raise DplError(f"{pseudo.spec} gives {'x'.join(map(str, pseudo.shape))} images, the labeled {labeled.spec} "
                       f"{'x'.join(map(str, labeled.shape))}")
    tau = opts.tau if opts.tau is not None else (labels.meta["tau"] if labels is not None else 1.0)

    seed_everything(cfg.seed)
    model, spec, parents = make_model(model_opts, base)
    model = rt.prepare(model)
    forward = rt.compiled(model)
    teachers = Teachers(teachers_ckpt, rt) if teachers_ckpt else None
    mean, std = base.normalization
    input_meta = artifacts.input_meta(base.shape[0], base.shape[1], mean, std)
    noise = noise_opts.for_data(base)

    rows = None
    if pseudo is not None and labels is not None:
        rows = label.select(labels, opts.min_confidence, opts.balance)
    n_pseudo = 0 if pseudo is None else (len(rows) if rows is not None else len(pseudo))
    empty = torch.empty(0, dtype=torch.uint8)
    # The images of both parts, and which pseudo-labeled image each selected label row stands for.
    feed = rt.place(labeled.images if labeled is not None else empty, pseudo.images if pseudo is not None else empty,
                    positions[rows] if rows is not None else torch.arange(n_pseudo))
    if rows is not None:
        rows, labels = rows.to(rt.device), labels.to(rt.device)
    y_l = labeled.labels.to(rt.device) if labeled is not None else None

    if labeled is not None and pseudo is not None:
        b_l = min(cfg.batch_size, len(labeled))
        b_u = max(1, round(opts.unlabeled_ratio * b_l))
        n_steps = n_pseudo // b_u
    elif labeled is not None:
        b_l, b_u = min(cfg.batch_size, len(labeled)), 0
        n_steps = len(labeled) // b_l
    else:
        b_l, b_u = 0, min(cfg.batch_size, n_pseudo)
        n_steps = n_pseudo // b_u
    n_steps = max(1, n_steps // distributed.rank_world()[1])     # --batch-size is per rank

    def batches(epoch: int):
        il = _stream(len(labeled), n_steps * b_l, cfg.seed, epoch, rt.device) if b_l else None
        iu = _stream(n_pseudo, n_steps * b_u, cfg.seed + 1, epoch, rt.device) if b_u else None
        return feed(((il[s * b_l:(s + 1) * b_l] if b_l else None, iu[s * b_u:(s + 1) * b_u] if b_u else None)
                     for s in range(n_steps)), _gather_parts)

    def objective(batch):
        (il, iu), x = batch
        row = rows[iu] if rows is not None and iu is not None else None      # rows of the label arrays
        x = augment.apply(x, noise)
        logits = forward(augment.to_input(x, mean, std, rt.cuda))
        t_probs = teachers.probs(x, tau) if teachers is not None else None
        stats, loss = {}, 0.0
        n_l = 0 if il is None else len(il)
        if il is not None:
            ce = F.cross_entropy(logits[:n_l], y_l[il])
            stats["ce"] = ce.detach()
            stats["acc"] = (logits[:n_l].argmax(1) == y_l[il]).float().mean()
            loss = ce
            if t_probs is not None and opts.alpha > 0:
                kd = soft_cross_entropy(logits[:n_l], t_probs[:n_l], tau)
                stats["kd"] = kd.detach()
                loss = loss + opts.alpha * kd
        if iu is not None:
            if labels is not None:
                targets = label.soft_targets(labels, row, tau, opts.hard)
            else:
                targets = t_probs[n_l:]
            s_u = logits[n_l:]
            if opts.hard or (labels is not None and labels.mode == "hard"):
                pseudo_loss = F.cross_entropy(s_u, targets.argmax(1))
            else:
                pseudo_loss = soft_cross_entropy(s_u, targets, tau)
            stats["pseudo"] = pseudo_loss.detach()
            loss = loss + opts.unlabeled_weight * pseudo_loss
        return loss, stats

    history = fit(model, objective, batches, n_steps, cfg, rt, on_progress, resume)

    metrics = {"train_loss": history[-1]["loss"]}
    if test is not None:
        logits = evaluate.predict(model, test.images, input_meta, rt)
        m = evaluate.classification_metrics(logits, test.labels, test.num_classes)
        metrics.update({"test_top1": m["top1"], "test_nll": m["nll"], "test_ece": m["ece"], "test_spec": test.spec})
    for path, ckpt in zip(teacher_paths, teachers_ckpt):
        parents.append({"role": "teacher", "path": str(path), "sha256": ckpt.sha256()})
    if labels is not None:
        parents.append({"role": "labels", "path": str(labels.path), "sha256": labels.sha256()})
    meta = {
        "arch": spec, "num_classes": base.num_classes, "classes": base.classes, "input": input_meta,
        "data": base.describe(), "parents": parents, "metrics": metrics, "seed": cfg.seed,
        "pseudo": None if pseudo is None else {**pseudo.describe(), "selected": n_pseudo,
                                               **({} if labels is None else {"labeled_by_teacher": len(labels)})},
        "train": train_record(cfg, cfg.batch_size, noise, steps_per_epoch=n_steps),
        "distill": {**asdict(opts), "tau": tau},
    }
    return Trained(model.cpu(), meta, history)


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
                           f"{missing[0].decode()!r}): the labels were made for another pool")
        return torch.from_numpy(order[at])
    made_for = labels.meta["data"]
    if made_for.get("fingerprint") != pseudo.fingerprint():
        raise DplError(f"{labels.path}: labels were made for {made_for.get('spec')} ({made_for.get('part')}, "
                       f"{made_for.get('n')} samples, fingerprint {str(made_for.get('fingerprint'))[:12]}), "
                       f"not for {pseudo.spec} ({pseudo.part}, {len(pseudo)} samples, "
                       f"fingerprint {pseudo.fingerprint()[:12]})")
    return labels.index
