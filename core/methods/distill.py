"""Knowledge distillation and Noisy Student training (`dpl distill`).

A student learns from true labels on the labeled set and from teacher targets on the pseudo-labeled set,
which come either from stored label shards (offline: the teacher never runs) or from live teachers
(online: their forward on the same augmented batch). With `--loss kd` (Hinton et al.), the loss terms are

    ce      H(y, P_S)                                             labeled samples
    kd      alpha * tau^2 * KL(P_T^tau || P_S^tau)                labeled samples, live teachers only
    pseudo  unlabeled_weight * tau^2 * KL(P_T^tau || P_S^tau)     pseudo-labeled samples
            (unlabeled_weight * H(argmax P_T, P_S) with hard targets)

and another `--loss` (a `losses.LOGIT_LOSSES` entry) takes the place of the KL in `kd` and `pseudo`. Both terms
are multiplied by the loss warm-up factor min(epochs done / loss_warmup_epochs, 1) (per step; DKD's by default).
With one live teacher, `--feature-loss` adds a term comparing layers of student and teacher on every row of the
batch (`core/features.py`; not warmed up): RepDistiller's rows are `--alpha 0` (CE and the feature term).

What each kind of label shard supports: soft shards (every class's probability) every loss; top-k shards `kd`
and `dkd` (within the top k, renormalised: the target of a pseudo-labeled row is the teacher's argmax, always in
the top k; DKD needs k >= 2 for a non-target distribution), not `lskd` or `mse`, which recover the teacher's
logits from all C probabilities; hard shards only `kd`, which then trains on the labels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .. import DplError, artifacts, losses, models
from ..data import augment
from . import label
from .features import FeatureOptions, FeatureTerm
from ..data import Dataset
from .common import (
    Mix, ModelOptions, NoiseOptions, Trained, ValOptions, checkpoint_meta, hooked, input_of, kept_epoch,
    load_teachers, make_model, parent, test_metrics, train_record
)
from ..engine.train import Clock, Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything


@dataclass(frozen=True, kw_only=True)
class DistillOptions:
    loss: str = "kd"                    # a losses.LOGIT_LOSSES entry
    tau: float | None = None            # None: the labels' own tau offline, 1 online
    alpha: float | None = None          # weight of the KD term on labeled samples (live teachers only) [1]
    unlabeled_weight: float | None = None   # weight of the pseudo-label term [1]
    unlabeled_ratio: float | None = None    # pseudo-labeled samples per labeled sample in each batch [3]
    hard: bool = False
    min_confidence: float | None = None
    balance: int | None = None
    dkd_alpha: float | None = None      # DKD's weight of its target-class term [1]
    dkd_beta: float | None = None       # DKD's weight of its non-target-class term [8]
    loss_warmup_epochs: float | None = None   # ramp of the distillation terms' weight [DKD: dkd_warmup; else 0]
    true_labels: bool = False           # resolved, not an option: offline KD, the stored rows learn their labels too

    def __post_init__(self):
        losses.logit_loss(self.loss)
        self._check_values()
        self._check_loss_options()

    def _check_values(self) -> None:
        for flag, value in (("--dkd-alpha", self.dkd_alpha), ("--dkd-beta", self.dkd_beta),
                            ("--loss-warmup-epochs", self.loss_warmup_epochs)):
            if value is not None and not 0 <= value < math.inf:
                raise DplError(f"{flag} must be a finite number >= 0, got {value}")
        if (self.dkd_alpha is not None or self.dkd_beta is not None) and self.loss != "dkd":
            raise DplError(f"--dkd-alpha and --dkd-beta weight the two terms of --loss dkd, not of --loss {self.loss}")
        if self.tau is not None and not 0 < self.tau < math.inf:
            raise DplError(f"--tau must be a finite number > 0, got {self.tau}")
        if (self.alpha or 0) < 0 or (self.unlabeled_weight or 0) < 0:
            raise DplError("--alpha and --unlabeled-weight must be >= 0")

    def _check_loss_options(self) -> None:
        if self.unlabeled_ratio is not None and not self.unlabeled_ratio > 0:
            raise DplError(f"--unlabeled-ratio must be > 0, got {self.unlabeled_ratio}")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            raise DplError(f"--min-confidence must be in [0, 1], got {self.min_confidence}")
        if self.balance is not None and self.balance < 1:
            raise DplError("--balance must be at least 1")
        if self.hard and self.loss != "kd":
            raise DplError(f"--loss {self.loss} compares class distributions; it cannot go with --hard")

    def resolved(self, labels: artifacts.Labels | None, teachers: bool, labeled: bool, pseudo: bool,
                 epochs: int, known: bool = False) -> DistillOptions:
        """The options with their defaults filled in for these parts and a run of `epochs`; an option that
        cannot apply is refused. `known`: the stored labels are of labeled images (a source's own labels, no
        partition), which `--alpha` makes offline KD: each row learns its true label and, weighted by alpha,
        its stored target, as a live teacher's labeled rows do."""
        self._refuse_inapplicable(labels, teachers, labeled, pseudo, known)
        true_labels = labels is not None and self.alpha is not None
        if self.loss_warmup_epochs is not None and self.loss_warmup_epochs > epochs:
            raise DplError(f"--loss-warmup-epochs {self.loss_warmup_epochs:g} is longer than the run "
                           f"(--epochs {epochs}): the loss would never reach its full weight")
        tau = self.tau if self.tau is not None else (labels.meta["tau"] if labels is not None else 1.0)
        warmup = self.loss_warmup_epochs if self.loss_warmup_epochs is not None else (
            dkd_warmup(epochs) if self.loss == "dkd" else 0.0)
        return replace(self, tau=tau, alpha=1.0 if self.alpha is None else self.alpha,
                       dkd_alpha=1.0 if self.dkd_alpha is None and self.loss == "dkd" else self.dkd_alpha,
                       dkd_beta=8.0 if self.dkd_beta is None and self.loss == "dkd" else self.dkd_beta,
                       loss_warmup_epochs=warmup,
                       unlabeled_weight=self.alpha if true_labels else (
                           1.0 if self.unlabeled_weight is None else self.unlabeled_weight),
                       true_labels=true_labels,
                       unlabeled_ratio=3.0 if self.unlabeled_ratio is None else self.unlabeled_ratio,
                       hard=self.hard or (labels is not None and labels.mode == "hard"))   # hard labels: hard targets

    def _refuse_inapplicable(self, labels: artifacts.Labels | None, teachers: bool, labeled: bool, pseudo: bool,
                             known: bool) -> None:
        if (self.min_confidence is not None or self.balance is not None) and labels is None:
            raise DplError("--min-confidence and --balance select among stored labels: give --labels")
        self._refuse_alpha(labels, teachers, labeled, known)
        if self.unlabeled_weight is not None and not pseudo:
            raise DplError("--unlabeled-weight weights the pseudo-labeled samples, and this run has none "
                           "(give --labels, or a partition whose unlabeled part the teacher labels)")
        if self.unlabeled_ratio is not None and not (labeled and pseudo):
            raise DplError("--unlabeled-ratio mixes labeled and pseudo-labeled samples, and this run has "
                           f"only {'labeled' if labeled else 'pseudo-labeled'} ones")
        if labels is not None:
            self._refuse_for_shards(labels)

    def _refuse_alpha(self, labels: artifacts.Labels | None, teachers: bool, labeled: bool, known: bool) -> None:
        """--alpha weighs a live teacher's term on labeled samples, or with --labels, offline KD's."""
        if self.alpha is None:
            return
        if labels is None:
            if not (teachers and labeled):
                raise DplError("--alpha weights a live teacher's term on labeled samples: it needs --teacher and "
                               "labeled data, or --labels of labeled images (offline KD)")
            return
        if not known or teachers:
            raise DplError("--alpha with --labels is offline KD on labeled images: it needs labels made for a "
                           "source's own labeled images, with no partition and no --teacher (pseudo-labels of "
                           "unlabeled images are weighted by --unlabeled-weight)")
        if labels.mode == "hard":
            raise DplError(f"{labels.path}: offline KD (--alpha with --labels) learns the teacher's class "
                           "distribution, and these labels are hard: label again with --soft or --topk")
        if self.unlabeled_weight is not None or self.hard:
            raise DplError("offline KD (--alpha with --labels) weighs the stored targets by --alpha: drop "
                           f"{'--unlabeled-weight' if self.unlabeled_weight is not None else '--hard'}")

    def _refuse_for_shards(self, labels: artifacts.Labels) -> None:
        """What the kind of label shard cannot serve (the module docstring's table)."""
        if self.loss != "kd" and labels.mode == "hard":
            raise DplError(f"{labels.path}: --loss {self.loss} needs the teacher's class distribution, and these "
                           "labels are hard (label + confidence): label again with --soft or --topk")
        if labels.mode == "topk":
            k = labels.meta["topk"]
            if self.loss in losses.FULL_DISTRIBUTION:
                raise DplError(f"{labels.path}: --loss {self.loss} recovers the teacher's logits from all its class "
                               f"probabilities, and these labels keep the top {k} only: label again with --soft")
            if self.loss == "dkd" and k < 2:
                raise DplError(f"{labels.path}: --loss dkd needs the teacher's non-target distribution, and these "
                               "labels keep the top 1 only: label again with --soft or --topk 2 or more")


def dkd_warmup(epochs: int) -> float:
    """DKD's default warm-up: mdistiller's 20 epochs, at most a quarter of the run (20 of 240 epochs there)."""
    return min(20.0, epochs / 4)


def logit_loss_of(opts: DistillOptions) -> losses.LogitLoss:
    """The resolved options' loss as (logits, targets, target class, tau) -> loss."""
    fn = losses.logit_loss(opts.loss)
    if opts.loss == "dkd":
        return lambda logits, targets, target_class, tau: fn(logits, targets, target_class, tau,
                                                             alpha=opts.dkd_alpha, beta=opts.dkd_beta)
    return fn


def source_meta(labels: artifacts.Labels | None, teacher_paths: list[Path]) -> dict:
    """The metadata of what the student learns from (the labels, else the first teacher), whose data and
    partition distill defaults to."""
    _require_targets(labels, teacher_paths)
    if labels is not None:
        return labels.meta
    return artifacts.read_header(teacher_paths[0], kind="checkpoint").meta


def _require_targets(labels: artifacts.Labels | None, teacher_paths: list[Path]) -> None:
    if labels is None and not teacher_paths:
        raise DplError("distill needs --labels DIR or --teacher CKPT (dpl teach trains on labels alone)")


class Teachers:
    """Frozen, un-noised teachers (eval mode, not trained); their mean softmax at temperature tau, and with
    `tap`, a single teacher's layer outputs from the same forward. A context manager: its taps come off at the
    end of the `with`."""

    def __init__(self, checkpoints: list[artifacts.Checkpoint], rt: Runtime):
        self.nets = [rt.prepare(c.build_model()).eval().requires_grad_(False) for c in checkpoints]
        self.inputs = [c.input for c in checkpoints]
        self.rt = rt
        self.taps: models.Taps | None = None

    def tap(self, layers: list[str], probs: bool) -> None:
        """Tap the one teacher's `layers`; without `probs` (no term uses its class distribution) its forward
        stops once they have run."""
        [net] = self.nets
        self.layers, self.logits = layers, models.feature_layer(net) if probs else None
        self.taps = models.Taps(net, [*layers, *([self.logits] if probs else [])], stop=True)

    @torch.no_grad()
    def run(self, x_uint8: torch.Tensor, tau: float) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """After `tap`: (the probabilities at tau, or None where not tapped; the tapped layers' outputs), from one
        forward."""
        inp = self.inputs[0]
        out = self.taps(augment.to_input(x_uint8, inp["mean"], inp["std"], self.rt.cuda))
        probs = None if self.logits is None else (out[self.logits].float() / tau).softmax(dim=1)
        return probs, [out[p] for p in self.layers]

    @torch.no_grad()
    def probs(self, x_uint8: torch.Tensor, tau: float) -> torch.Tensor:
        total = 0
        for net, inp in zip(self.nets, self.inputs):
            logits = net(augment.to_input(x_uint8, inp["mean"], inp["std"], self.rt.cuda))
            total = total + (logits.float() / tau).softmax(dim=1)
        return total / len(self.nets)

    def __enter__(self) -> Teachers:
        return self

    def __exit__(self, *exc) -> None:
        if self.taps is not None:
            self.taps.remove()


class ViewReplay:
    """Stored views replayed (consistent-view offline KD, `dpl label --views K`): in epoch e, label row r shows its
    view (start[r] + e) mod K, `start` drawn from the run's seed, so over K epochs each row shows each of its
    views once; the view's crop and flip are the stored ones and its target the teacher's output on it."""

    def __init__(self, views: artifacts.LabelViews, rows: torch.Tensor, seed: int, device):
        start = torch.randint(0, views.count, (len(views.offset),), generator=torch.Generator().manual_seed(seed))
        self.start, self.rows, self.count = start.to(device), rows.to(device), views.count
        self.offset, self.flip = views.offset.to(device), views.flip.to(device)

    def pick(self, iu: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the pseudo-labeled rows `iu` of a step: (each row's view, its crop offsets, its flip)."""
        r = self.rows[iu]
        v = (self.start[r] + epoch) % self.count
        return v, self.offset[r, v], self.flip[r, v]


def distill_objective(forward, y_labeled: torch.Tensor | None, targets, teachers: Teachers | None,
                      input_meta: dict, noise: augment.Noise, opts: DistillOptions, rt: Runtime,
                      clock: Clock | None = None, features: FeatureTerm | None = None,
                      y_stored: torch.Tensor | None = None, views: ViewReplay | None = None):
    """The step: noised batch through the student (and live teachers); the loss terms of the module docstring.
    `targets(rows, teacher_probs, view)` gives the pseudo-labeled rows' targets at tau; `clock` (set by fit) drives
    the loss warm-up; `features` adds its term (the student then runs through its taps); `y_stored`, the true
    label of each stored label row, makes the pseudo-labeled rows offline KD's (opts.true_labels); `views` replays
    the stored views on the pseudo-labeled rows (the labeled rows are noised as usual)."""
    logit_loss = logit_loss_of(opts)
    tau = opts.tau
    n_labeled = len(y_labeled) if y_labeled is not None else 0

    def step(batch):
        (il, iu), x = batch
        view = None
        if views is None or iu is None:
            x = augment.apply(x, noise)
        else:
            n_l = 0 if il is None else len(il)
            view, offsets, flips = views.pick(iu, clock.epoch)
            replayed = augment.replay(x[n_l:], noise, offsets, flips)
            x = torch.cat([augment.apply(x[:n_l], noise), replayed]) if n_l else replayed
        x_in = augment.to_input(x, input_meta["mean"], input_meta["std"], rt.cuda)
        terms, stats = {}, {}
        if features is None:
            logits = forward(x_in)
            t_probs = teachers.probs(x, tau) if teachers is not None else None
        else:       # one forward of each net gives its logits (where needed) and its tapped layers
            (logits, s_out), (t_probs, t_out) = features.student(x_in), teachers.run(x, tau)
            # Each row's sample: labeled rows by their index, pseudo-labeled rows after them.
            ids = torch.cat([i for i in (il, None if iu is None else iu + n_labeled) if i is not None])
            terms[features.name] = features.term(s_out, t_out, ids)
        warm = losses.warmup_factor(clock.epochs_done, opts.loss_warmup_epochs) if clock is not None else 1.0
        n_l = 0 if il is None else len(il)
        if il is not None:
            y = y_labeled[il]
            terms["ce"] = losses.cross_entropy(logits[:n_l], y)
            stats["acc"] = losses.accuracy(logits[:n_l], y)
            if t_probs is not None and opts.alpha > 0:
                terms["kd"] = opts.alpha * warm * logit_loss(logits[:n_l], t_probs[:n_l], y, tau)
        if iu is not None:
            target, s_u = targets(iu, None if t_probs is None else t_probs[n_l:], view), logits[n_l:]
            if y_stored is not None:      # offline KD: the stored rows' true labels, as a live teacher's labeled rows
                y = y_stored[iu]
                terms["ce"] = losses.cross_entropy(s_u, y)
                stats["acc"] = losses.accuracy(s_u, y)
                terms["kd"] = opts.alpha * warm * logit_loss(s_u, target, y, tau)
                return terms, stats
            terms["pseudo"] = opts.unlabeled_weight * warm * pseudo_loss(s_u, target, opts, logit_loss)
            stats.update(pseudo_figures(target))
        return terms, stats
    return step


def pseudo_loss(logits: torch.Tensor, target: torch.Tensor, opts: DistillOptions, logit_loss) -> torch.Tensor:
    """A pseudo-labeled row's loss: its target's argmax as a hard label (--hard, hard shards), else the logit
    loss with that argmax as the target class."""
    if opts.hard:
        return losses.hard_pseudo_label(logits, target)
    return logit_loss(logits, target, target.argmax(1), opts.tau)


def floored(labels: artifacts.Labels, loss: str) -> artifacts.Labels:
    """Stored labels ready for `loss`. Losses that take logs of the teacher's probabilities (FULL_DISTRIBUTION)
    count a probability that underflowed float16 as the smallest one it holds, floored before re-tempering so
    that the floor moves with the tau like every other probability."""
    if labels.mode == "soft" and loss in losses.FULL_DISTRIBUTION:
        views = labels.views and replace(labels.views, probs=labels.views.probs.clamp_min(losses.FP16_SMALLEST))
        return replace(labels, probs=labels.probs.clamp_min(losses.FP16_SMALLEST), views=views)
    return labels


def pseudo_figures(target: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the pseudo-labeled rows of a batch were taught: the targets' mean confidence (their top
    probability at tau) and the fraction of them in each class."""
    confidence, predicted = target.float().max(dim=1)
    counts = torch.bincount(predicted, minlength=target.shape[1]).float()
    return {"pseudo_conf": confidence.mean(), "pseudo_class_frac": counts / len(predicted)}


def distill(labeled: Dataset | None, pseudo: Dataset | None, labels: artifacts.Labels | None,
            teacher_paths: list[Path], model_opts: ModelOptions, noise_opts: NoiseOptions,
            opts: DistillOptions, cfg: TrainConfig, rt: Runtime, test: Dataset | None = None,
            on_progress: Progress | None = None, resume: ResumeSpec | None = None, val: Dataset | None = None,
            val_opts: ValOptions = ValOptions(), features: FeatureOptions = FeatureOptions()) -> Trained:
    """`val` is held out of the labeled part (data.hold_out) and measured as `val_opts` says."""
    _require_targets(labels, teacher_paths)
    features = features.resolved(labels is not None, len(teacher_paths))
    opts = opts.resolved(labels, bool(teacher_paths), labeled is not None, pseudo is not None, cfg.epochs,
                         _of_labeled_images(labels, labeled, pseudo))
    base = _check_parts(labeled, pseudo)
    noise = noise_opts.for_data(base)
    if labels is not None and labels.views is not None:
        check_views(labels, base, noise)
    teachers_ckpt = load_teachers(teacher_paths, base)
    positions = label.check_labels_fit(labels, pseudo) if pseudo is not None and labels is not None else None

    seed_everything(cfg.seed)
    model, spec, parents = make_model(model_opts, base)
    model = rt.prepare(model)
    teachers = Teachers(teachers_ckpt, rt) if teachers_ckpt else None
    input_meta = input_of(base)

    rows = label.select(labels, opts.min_confidence, opts.balance) if positions is not None else None
    views = None if rows is None or labels.views is None else ViewReplay(labels.views, rows, cfg.seed, rt.device)
    feed, n_pseudo = _feed(labeled, pseudo, positions, rows, rt)
    mix = Mix.plan(0 if labeled is None else len(labeled), n_pseudo, cfg.batch_size, opts.unlabeled_ratio)
    term = _feature_term(features, model, teachers, base.shape, mix, opts, labels is not None, rt)
    module = model if term is None else nn.ModuleDict({"student": model, **term.heads})
    clock = Clock()
    objective = distill_objective(rt.compiled(model), labeled.labels.to(rt.device) if labeled is not None else None,
                                  _targets(labels, rows, opts, rt), teachers, input_meta, noise, opts, rt, clock, term,
                                  pseudo.labels[positions[rows]].to(rt.device) if opts.true_labels else None, views)
    with hooked(teachers, term):
        history = fit(module, objective, mix.batches(feed, cfg.seed, rt.device), mix.steps, cfg, rt, on_progress,
                      resume, batch_images=mix.rows, validation=val_opts.validation(model, val, input_meta, rt),
                      clock=clock, state=term)

    parents += [parent("teacher", p, c.sha256()) for p, c in zip(teacher_paths, teachers_ckpt)]
    if labels is not None:
        parents.append(parent("labels", labels.path, labels.sha256()))
    metrics = {"train_loss": kept_epoch(history, val_opts)["loss"], **test_metrics(model, test, input_meta, rt)}
    pseudo_record = None if pseudo is None else {
        **pseudo.describe(), "selected": n_pseudo, **({} if labels is None else {"labeled_by_teacher": len(labels)})}
    record = {**asdict(opts), **({"features": term.record()} if term is not None else {}),
              **({"views": views.count} if views is not None else {})}
    meta = checkpoint_meta(spec, base, parents, cfg, train_record(cfg, cfg.batch_size, noise, steps_per_epoch=mix.steps),
                           metrics, history, val, val_opts, pseudo=pseudo_record, distill=record)
    heads = {} if term is None else {k: v.cpu() for k, v in term.heads.state_dict().items()}
    return Trained(model.cpu(), meta, history, objective=heads)


def check_views(labels: artifacts.Labels, base: Dataset, noise: augment.Noise) -> None:
    """Stored views replay only on images of their size, under the student's own crop and flip."""
    stored = labels.views.meta
    said = lambda size, pad, flip: (f"{size} px images cropped after padding by {pad}" if pad else  # noqa: E731
                                    f"{size} px images uncropped") + (", flipped" if flip else ", unflipped")
    mine = (base.shape[1], noise.crop_pad, noise.hflip)
    if (stored["size"], stored["crop_pad"], stored["hflip"]) != mine:
        raise DplError(f"{labels.path}: its stored views are of {said(stored['size'], stored['crop_pad'], stored['hflip'])}"
                       f"; this distill's student sees {said(*mine)}: distill with the views' size (--resize "
                       f"{stored['size']}), crop and flip, or label again with --views for this one")


def _feed(labeled: Dataset | None, pseudo: Dataset | None, positions: torch.Tensor | None, rows: torch.Tensor | None,
          rt: Runtime):
    """The images of both parts, and which pseudo-labeled image each selected label row stands for (`Mix`'s three
    tensors); and how many pseudo-labeled rows there are."""
    empty = torch.empty(0, dtype=torch.uint8)
    n_pseudo = 0 if pseudo is None else (len(rows) if rows is not None else len(pseudo))
    feed = rt.place(labeled.images if labeled is not None else empty, pseudo.images if pseudo is not None else empty,
                    positions[rows] if rows is not None else torch.arange(n_pseudo))
    return feed, n_pseudo


def _of_labeled_images(labels: artifacts.Labels | None, labeled: Dataset | None, pseudo: Dataset | None) -> bool:
    """Whether the stored labels are of labeled images: a source's own labels, no partition (offline KD's rows)."""
    return (labels is not None and labeled is None and pseudo is not None and pseudo.part == "all"
            and bool((pseudo.labels >= 0).all()))


def _targets(labels: artifacts.Labels | None, rows: torch.Tensor | None, opts: DistillOptions, rt: Runtime):
    """`targets(rows of the batch, live teacher probabilities)`: the selected stored labels' targets at tau, or the
    live teachers' probabilities."""
    if rows is None:
        return lambda iu, t_probs, view: t_probs
    rows, on_device = rows.to(rt.device), floored(labels, opts.loss).to(rt.device)
    return lambda iu, t_probs, view: label.soft_targets(on_device, rows[iu], opts.tau, opts.hard, view)


def _feature_term(features: FeatureOptions, model: nn.Module, teachers: Teachers | None, shape, mix: Mix,
                  opts: DistillOptions, stored_labels: bool, rt: Runtime) -> FeatureTerm | None:
    """The run's feature term, the teacher tapped for it; None without --feature-loss."""
    if not features.active:
        return None
    term = FeatureTerm(features, model, teachers.nets[0], shape, mix.labeled + mix.pseudo, rt)
    # The teacher's class distribution is needed by the kd term, and by pseudo-labeled rows it labels live.
    probs = (mix.labeled > 0 and opts.alpha > 0) or (mix.pseudo > 0 and not stored_labels)
    teachers.tap(term.teacher_layers, probs)
    return term


def _check_parts(labeled: Dataset | None, pseudo: Dataset | None) -> Dataset:
    """The labeled and pseudo-labeled parts must be usable together; returns the one that defines the input."""
    if labeled is not None and (labeled.labels < 0).any():
        raise DplError(f"{labeled.spec}: the labeled part has samples without labels")
    for ds in (labeled, pseudo):
        if ds is not None and len(ds) == 0:
            raise DplError(f"{ds.spec} ({ds.part}): no samples")
    if labeled is not None and pseudo is not None and labeled.shape != pseudo.shape:
        raise DplError(f"{pseudo.spec} gives {'x'.join(map(str, pseudo.shape))} images, the labeled {labeled.spec} "
                       f"{'x'.join(map(str, labeled.shape))}")
    if labeled is None and pseudo is None:
        raise DplError("distill needs data to train on")
    return labeled if labeled is not None else pseudo
