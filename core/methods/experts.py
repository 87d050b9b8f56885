"""Several experts, one student (`dpl distill --labels A/ --labels B/`): one head per label folder.

Experts with different label spaces (one trained on digits, one on Fashion-MNIST; a fine and a coarse
classifier) each label one shared pool, typically the union of their images (`--data A+B`, `data.load`),
and one student learns all of them at once. The student is a registry model whose final Linear has
sum_h C_h outputs; head h is the slice [offset_h, offset_h + C_h) of its logits with its own softmax, which is
exactly separate linear heads on one backbone, built, saved and loaded (`--init`) like any model. The loss is

    pseudo_<h>   unlabeled_weight * warm * L(student's slice h, expert h's targets at tau_h)   summed over heads

on every pool image, L the `--loss` (`losses.LOGIT_LOSSES`; `--hard`: cross-entropy on the expert's argmax),
tau_h the folder's own tau unless `--tau` is given, warm distill's loss warm-up. The checkpoint's `heads`
(name, class names, offset, the label folder, the expert's data and test split) let `dpl eval` measure each head
on its own expert's test data and `dpl label` write one label folder per head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .. import DplError, artifacts, data, losses
from ..data import augment
from ..reporting import evaluate
from . import label
from ..data import Dataset
from .distill import DistillOptions, floored, logit_loss_of, pseudo_figures, pseudo_loss
from .common import (
    Mix, ModelOptions, NoiseOptions, Trained, ValOptions, checkpoint_meta, input_of, kept_epoch, make_model, parent,
    train_record
)
from ..engine.train import Clock, Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything


@dataclass(frozen=True)
class Head:
    """One expert's part of the student: its label folder, the distill options resolved for that folder (its
    tau), where its slice of the logits starts, and the expert's own data and test split (None: unknown)."""

    name: str
    labels: artifacts.Labels
    opts: DistillOptions
    offset: int
    sha256: str
    expert_data: str | None = None
    test: str | None = None

    @property
    def size(self) -> int:
        return self.labels.num_classes

    @property
    def columns(self) -> slice:
        return slice(self.offset, self.offset + self.size)

    @property
    def classes(self) -> list[str]:
        return list(self.labels.meta.get("classes") or [str(c) for c in range(self.size)])

    def record(self) -> dict:
        """The head's entry in the checkpoint's `heads` (validated by artifacts.META_RULES)."""
        return {"name": self.name, "classes": self.classes, "offset": self.offset,
                "labels": {"path": str(self.labels.path), "sha256": self.sha256},
                "data": self.expert_data, "test": self.test, "tau": self.opts.tau}


def head_names(folders: list[Path], names: list[str] | None) -> list[str]:
    """The heads' names: `names` (--head-names), else each label folder's name; each a plain folder name
    (dpl label writes OUT/NAME/), all different."""
    if names is None:
        names = [Path(f).resolve().name for f in folders]
        given = "the label folders' names"
    else:
        given = "--head-names"
        if len(names) != len(folders):
            raise DplError(f"--head-names gives {len(names)} names for {len(folders)} label folders")
    for n in names:
        if not artifacts.HEAD_NAME.fullmatch(n):
            raise DplError(f"head name {n!r} (from {given}) is not a plain name (letters, digits, _ . -, at most "
                           "64): give --head-names a,b,...")
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise DplError(f"two heads would be named {twice!r} (from {given}): give --head-names a,b,...")
    return names


def heads_of(labels: list[artifacts.Labels], names: list[str] | None, opts: DistillOptions, epochs: int) -> list[Head]:
    """A head per label folder, in order, its options resolved (and refused where they cannot apply)."""
    if len(labels) < 2:
        raise DplError("a multi-head student needs two --labels folders or more")
    for flag, value in (("--min-confidence", opts.min_confidence), ("--balance", opts.balance)):
        if value is not None:
            raise DplError(f"{flag} selects rows of one label folder; with several --labels every head learns "
                           "its expert's labels on every image of the pool")
    shas = [l.sha256() for l in labels]
    for i, l in enumerate(labels):
        for j in range(i):
            if shas[i] == shas[j]:
                raise DplError(f"{l.path} and {labels[j].path} hold the same labels: give each expert's folder once")
            if l.meta.get("classes") and l.meta.get("classes") == labels[j].meta.get("classes"):
                raise DplError(f"{labels[j].path} and {l.path} label the same classes "
                               f"({', '.join(l.meta['classes'][:4])}, ...): heads are for different label spaces; "
                               "average teachers of one label space with dpl label T1 --ensemble T2")
    names = head_names([l.path for l in labels], names)
    heads, offset = [], 0
    for name, l, sha in zip(names, labels, shas):
        expert, test = expert_of(l)
        heads.append(Head(name, l, opts.resolved(l, False, False, True, epochs), offset, sha, expert, test))
        offset += l.num_classes
    return heads


def expert_of(labels: artifacts.Labels) -> tuple[str | None, str | None]:
    """The data spec the folder's (first) teacher was trained on and its source's test split; (None, None)
    when the teacher's checkpoint is gone. Labels written by a head of a multi-head student take that head's."""
    entry = labels.meta["teachers"][0] if labels.meta["teachers"] else {}
    try:
        meta = artifacts.read_header(Path(entry.get("path") or ""), kind="checkpoint").meta
    except DplError:
        return None, None
    if entry.get("head"):
        head = next((h for h in meta.get("heads") or [] if h["name"] == entry["head"]), {})
        return head.get("data"), head.get("test")
    spec = meta.get("data", {}).get("spec")
    if spec is None:
        return None, None
    try:
        return spec, f"{data.parse_spec(spec)[0]}:test"
    except DplError as e:       # a corrupt or foreign checkpoint's data spec
        raise DplError(f"{entry['path']}: {e}") from None


def check_pool(heads: list[Head], pool: Dataset) -> torch.Tensor:
    """Every folder must label the same rows of this pool: where each label row's sample sits in it."""
    first = heads[0].labels
    for h in heads[1:]:
        a, b = first.meta["data"], h.labels.meta["data"]
        if a.get("fingerprint") != b.get("fingerprint"):
            raise DplError(f"{first.path} labels {a.get('spec')} ({a.get('part')}, {a.get('n')} samples) and "
                           f"{h.labels.path} labels {b.get('spec')} ({b.get('part')}, {b.get('n')} samples): every "
                           "expert must label the same pool (e.g. --data A+B --resize S for each)")
        if not torch.equal(first.index, h.labels.index):
            raise DplError(f"{first.path} and {h.labels.path} label different rows of {a.get('spec')} "
                           "(an unfinished folder?): every expert must label every image of the pool")
    # The pool's own classes, if it has any, belong to no head: each folder is checked against the images only.
    return label.check_labels_fit(first, replace(pool, classes=[]))


def expert_test(head: Head, pool: Dataset, download: bool = False) -> Dataset | None:
    """The expert's test split at the pool's size and channels, when it can be read and has the head's classes."""
    if head.test is None:
        return None
    try:
        test = data.load(head.test, resize=pool.shape[1], channels=pool.shape[0], download=download)
    except DplError:
        return None
    return test if test.num_classes == head.size and (test.labels >= 0).any() else None


def head_logits(logits: torch.Tensor, head: dict) -> torch.Tensor:
    """A head's slice of a multi-head student's logits (`head`: an entry of the checkpoint's `heads`)."""
    return logits[:, head["offset"]: head["offset"] + len(head["classes"])]


def check_head_input(ckpt: artifacts.Checkpoint, head: dict, ds: Dataset) -> None:
    """The student must take this data's images, and the data (where it has classes) be of the head's classes."""
    expected = (ckpt.input["channels"], ckpt.input["size"], ckpt.input["size"])
    if tuple(ds.shape) != expected:
        raise DplError(f"{ckpt.path}: the model takes {'x'.join(map(str, expected))} images, "
                       f"{ds.spec} has {'x'.join(map(str, ds.shape))}")
    if ds.num_classes and ds.num_classes != len(head["classes"]):
        raise DplError(f"{ckpt.path}: head {head['name']!r} predicts {len(head['classes'])} classes, {ds.spec} has "
                       f"{ds.num_classes}")


def experts_objective(forward, heads: list[Head], stored: list[artifacts.Labels], input_meta: dict,
                      noise: augment.Noise, rt: Runtime, clock: Clock | None = None):
    """The step: the noised pool images through the student; each head's slice learns its expert's targets
    (the terms of the module docstring). `stored[h]` is head h's label folder on the device, its rows those
    of the batch's indices."""
    loss_of = [logit_loss_of(h.opts) for h in heads]

    def step(batch):
        (_, rows), x = batch
        logits = forward(augment.to_input(augment.apply(x, noise), input_meta["mean"], input_meta["std"], rt.cuda))
        terms, stats = {}, {}
        for h, labels, loss in zip(heads, stored, loss_of):
            z = logits[:, h.columns]
            target = label.soft_targets(labels, rows, h.opts.tau, h.opts.hard)
            warm = losses.warmup_factor(clock.epochs_done, h.opts.loss_warmup_epochs) if clock is not None else 1.0
            terms[f"pseudo_{h.name}"] = h.opts.unlabeled_weight * warm * pseudo_loss(z, target, h.opts, loss)
            stats.update({f"{k}_{h.name}": v for k, v in pseudo_figures(target).items()})
            stats[f"agree_{h.name}"] = (z.argmax(1) == target.argmax(1)).float().mean()
        return terms, stats
    return step


def distill_experts(pool: Dataset, labels: list[artifacts.Labels], names: list[str] | None, model_opts: ModelOptions,
                    noise_opts: NoiseOptions, opts: DistillOptions, cfg: TrainConfig, rt: Runtime,
                    on_progress: Progress | None = None, resume: ResumeSpec | None = None,
                    download: bool = False) -> Trained:
    """Train one student with a head per label folder on every image of `pool`, which every folder labels."""
    heads = heads_of(labels, names, opts, cfg.epochs)
    positions = check_pool(heads, pool)
    if len(positions) == 0:
        raise DplError(f"{pool.spec}: no labeled samples to train on")
    tests = [expert_test(h, pool, download) for h in heads]
    # The student predicts every head's classes, named HEAD:CLASS.
    student_data = replace(pool, classes=[f"{h.name}:{c}" for h in heads for c in h.classes])

    seed_everything(cfg.seed)
    model, spec, parents = make_model(model_opts, student_data)
    model = rt.prepare(model)
    input_meta, noise = input_of(pool), noise_opts.for_data(pool)
    stored = [floored(h.labels, h.opts.loss).to(rt.device) for h in heads]
    n = len(positions)
    feed = rt.place(torch.empty(0, dtype=torch.uint8), pool.images, positions)
    mix = Mix.plan(0, n, cfg.batch_size, 1.0)
    clock = Clock()
    objective = experts_objective(rt.compiled(model), heads, stored, input_meta, noise, rt, clock)
    history = fit(model, objective, mix.batches(feed, cfg.seed, rt.device), mix.steps, cfg, rt,
                  on_progress, resume, batch_images=mix.pseudo, clock=clock)

    records = [h.record() for h in heads]
    metrics = {"train_loss": kept_epoch(history, ValOptions())["loss"]}
    for h, record, test in zip(heads, records, tests):
        if test is None:
            record["test"] = None
            continue
        m = evaluate.classification_metrics(head_logits(evaluate.predict(model, test.images, input_meta, rt), record),
                                            test.labels, test.num_classes)
        metrics.update({f"test_top1_{h.name}": m["top1"], f"test_nll_{h.name}": m["nll"],
                        f"test_ece_{h.name}": m["ece"]})
    parents += [parent("labels", h.labels.path, h.sha256) for h in heads]
    meta = checkpoint_meta(spec, student_data, parents, cfg,
                           train_record(cfg, cfg.batch_size, noise, steps_per_epoch=mix.steps), metrics, history,
                           pseudo={**pool.describe(), "selected": n},
                           distill=asdict(replace(heads[0].opts, tau=opts.tau, alpha=None, unlabeled_ratio=None)),
                           heads=records)
    return Trained(model.cpu(), meta, history)
