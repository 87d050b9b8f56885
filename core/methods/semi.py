"""Online pseudo-labeling on a labeled/unlabeled partition: FixMatch and FlexMatch (`dpl semi`).

Each step takes B labeled samples and mu * B unlabeled ones (`common.Mix`, the one batch mixer). The model sees
three views in one forward (one batch-norm pass over all, as FixMatch trains): the labeled samples and the
unlabeled ones under the weak noise (crop and flip), and the unlabeled ones again under the strong noise
(RandAugment, then crop and flip). With
p = softmax of the weak view's logits (no gradient), the pseudo-label is argmax p, kept when max p reaches its
class's threshold:

    ce      H(y, P(labeled))                                              labeled samples
    pseudo  unlabeled_weight * mean over unlabeled of mask * H(argmax p, P(strong view))

FixMatch (Sohn et al. 2020) keeps one threshold tau for every class. FlexMatch (Zhang et al. 2021) lowers it
per class by the class's learning effect: sigma(c), the unlabeled samples whose latest prediction above tau
was c, normalised with the warm-up by max(max_c sigma, the samples never predicted above tau), gives
threshold_c = M(beta(c)) * tau with the convex M(x) = x / (2 - x). The latest predictions are a tensor over
the unlabeled part (-1: none yet), kept in the resume state so that --resume continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from .. import DplError, losses
from ..data import augment
from ..engine import distributed
from ..data import Dataset
from .common import (
    Mix, ModelOptions, NoiseOptions, Trained, ValOptions, checkpoint_meta, input_of, kept_epoch, make_model,
    test_metrics, train_record
)
from ..engine.train import Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything

ALGORITHMS = ("fixmatch", "flexmatch")


@dataclass(frozen=True, kw_only=True)
class SemiOptions:
    algorithm: str = "fixmatch"
    threshold: float = 0.95             # tau: the confidence a pseudo-label needs (FlexMatch: its upper bound)
    mu: int = 7                         # unlabeled samples per labeled sample in each step
    unlabeled_weight: float = 1.0       # lambda_u
    strong: tuple[int, int] = (2, 20)   # RandAugment of the strong view: N ops, magnitude drawn from 0..M each step

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise DplError(f"unknown algorithm {self.algorithm!r}; valid: {', '.join(ALGORITHMS)}")
        if not 0 < self.threshold <= 1:
            raise DplError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.mu < 1:
            raise DplError(f"--mu must be at least 1, got {self.mu}")
        if not 0 <= self.unlabeled_weight < math.inf:
            raise DplError(f"--unlabeled-weight must be a finite number >= 0, got {self.unlabeled_weight}")
        if self.strong is None or self.strong[0] < 1:
            raise DplError("the strong view needs RandAugment: --randaugment N,M with N >= 1")


# ---- pseudo-labels and thresholds -----------------------------------------------------------------------

def pseudo_mask(confidence: torch.Tensor, prediction: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """1.0 where a pseudo-label's confidence reaches its class's threshold, else 0.0."""
    return (confidence >= thresholds[prediction]).float()


def learning_effects(predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """FlexMatch's beta(c) with the threshold warm-up: the samples whose latest confident prediction is c,
    over the largest of those counts and of the samples not yet predicted (-1)."""
    counts = torch.bincount(predicted + 1, minlength=num_classes + 1).float()
    return counts[1:] / torch.maximum(counts[1:].max(), counts[0]).clamp_min(1)


def flex_thresholds(beta: torch.Tensor, tau: float) -> torch.Tensor:
    """threshold_c = M(beta(c)) * tau with the convex mapping M(x) = x / (2 - x)."""
    return tau * beta / (2 - beta)


class Thresholds:
    """FixMatch: tau for every class; no state."""

    def __init__(self, tau: float, num_classes: int, device: torch.device):
        self.tau, self.fixed = tau, torch.full((num_classes,), tau, device=device)

    def current(self) -> torch.Tensor:
        return self.fixed

    def update(self, indices: torch.Tensor, confidence: torch.Tensor, prediction: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


class FlexThresholds(Thresholds):
    """FlexMatch: per-class thresholds from `predicted`, every unlabeled sample's latest prediction with
    confidence >= tau (-1: none yet). Under torchrun every rank applies every rank's predictions, so all keep
    the same record."""

    def __init__(self, tau: float, num_classes: int, n_unlabeled: int, device: torch.device):
        super().__init__(tau, num_classes, device)
        self.num_classes = num_classes
        self.predicted = torch.full((n_unlabeled,), -1, dtype=torch.int64, device=device)

    def current(self) -> torch.Tensor:
        return flex_thresholds(learning_effects(self.predicted, self.num_classes), self.tau)

    def update(self, indices: torch.Tensor, confidence: torch.Tensor, prediction: torch.Tensor) -> None:
        if distributed.rank_world()[1] > 1:
            device = self.predicted.device
            indices, confidence, prediction = (torch.cat(distributed.gather(t, device))
                                               for t in (indices, confidence, prediction))
        keep = confidence >= self.tau
        self.predicted[indices[keep]] = prediction[keep]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"predicted": self.predicted}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        saved = state.get("predicted")
        if saved is None or saved.shape != self.predicted.shape:
            raise DplError("the resume state has no FlexMatch record of this unlabeled part")
        self.predicted.copy_(saved)


def thresholds_for(opts: SemiOptions, num_classes: int, n_unlabeled: int, device: torch.device) -> Thresholds:
    if opts.algorithm == "flexmatch":
        return FlexThresholds(opts.threshold, num_classes, n_unlabeled, device)
    return Thresholds(opts.threshold, num_classes, device)


# ---- batches ------------------------------------------------------------------------------------------

def mix_of(n_labeled: int, n_unlabeled: int, batch_size: int, mu: int) -> Mix:
    """FixMatch's steps, by the one mixer: per rank and step `labeled` samples and `pseudo` = mu * labeled unlabeled
    ones; an epoch one pass over the unlabeled part. Per rank (--batch-size is per rank), so that the global step's
    samples are the same for any number of ranks with the same global batch; refused where the unlabeled part is
    smaller than one step."""
    mix = Mix.plan(n_labeled, n_unlabeled, batch_size, mu)
    world = distributed.rank_world()[1]
    if n_unlabeled < mix.pseudo * world:
        raise DplError(f"the unlabeled part has {n_unlabeled} samples, fewer than one step takes "
                       f"({mix.pseudo * world} = --mu {mu} x {mix.labeled} labeled"
                       f"{f' x {world} ranks' if world > 1 else ''}): lower --batch-size or --mu")
    return mix


# ---- the objective ------------------------------------------------------------------------------------

def semi_objective(forward, y_labeled: torch.Tensor, y_unlabeled: torch.Tensor | None, thresholds: Thresholds,
                   input_meta: dict, weak: augment.Noise, opts: SemiOptions, rt: Runtime):
    """The step of the module docstring. `y_unlabeled` (the unlabeled part's ground truth, when the source has
    it) is only measured: `pseudo_acc`, the accuracy of the pseudo-labels, and `mask_correct`, the fraction of
    unlabeled samples kept with a correct one (the kept ones' precision is mask_correct / mask_ratio)."""
    n_ops, max_magnitude = opts.strong
    flex = opts.algorithm == "flexmatch"

    def step(batch):
        (il, iu), x = batch
        n_l, n_u = len(il), len(iu)
        magnitude = int(torch.randint(0, max_magnitude + 1, ()))      # FixMatch's random magnitude, per step
        strong = replace(weak, randaugment=(n_ops, magnitude))
        views = torch.cat([augment.apply(x[:n_l], weak), augment.apply(x[n_l:], weak), augment.apply(x[n_l:], strong)])
        logits = forward(augment.to_input(views, input_meta["mean"], input_meta["std"], rt.cuda))
        labeled, weak_u, strong_u = logits.split([n_l, n_u, n_u])
        confidence, pseudo = weak_u.detach().float().softmax(dim=1).max(dim=1)
        current = thresholds.current()
        mask = pseudo_mask(confidence, pseudo, current)
        thresholds.update(iu, confidence, pseudo)
        y = y_labeled[il]
        terms = {"ce": losses.cross_entropy(labeled, y),
                 "pseudo": opts.unlabeled_weight * losses.masked_pseudo_label(strong_u, pseudo, mask)}
        stats = {"acc": losses.accuracy(labeled, y), "mask_ratio": mask.mean(),
                 "mask_class_frac": torch.bincount(pseudo, weights=mask, minlength=len(current)) / n_u}
        if y_unlabeled is not None:
            correct = (pseudo == y_unlabeled[iu]).float()
            stats.update(pseudo_acc=correct.mean(), mask_correct=(correct * mask).mean())
        if flex:
            stats["thresholds"] = current
        return terms, stats
    return step


def semi(labeled: Dataset, unlabeled: Dataset, model_opts: ModelOptions, noise_opts: NoiseOptions, opts: SemiOptions,
         cfg: TrainConfig, rt: Runtime, test: Dataset | None = None, on_progress: Progress | None = None,
         resume: ResumeSpec | None = None, val: Dataset | None = None, val_opts: ValOptions = ValOptions()) -> Trained:
    """Train on the labeled part and the unlabeled part of one partition; `val` is held out of the labeled part."""
    _check_parts(labeled, unlabeled)
    mix = mix_of(len(labeled), len(unlabeled), cfg.batch_size, opts.mu)
    seed_everything(cfg.seed)
    model, spec, parents = make_model(model_opts, labeled)
    model = rt.prepare(model)
    input_meta = input_of(labeled)
    weak = replace(noise_opts, randaugment=None).for_data(labeled)
    thresholds = thresholds_for(opts, labeled.num_classes, len(unlabeled), rt.device)
    truth = unlabeled.labels.to(rt.device) if (unlabeled.labels >= 0).all() else None
    objective = semi_objective(rt.compiled(model), labeled.labels.to(rt.device), truth, thresholds, input_meta, weak,
                               opts, rt)
    feed = rt.place(labeled.images, unlabeled.images)
    history = fit(model, objective, mix.batches(feed, cfg.seed, rt.device),
                  mix.steps, cfg, rt, on_progress, resume, batch_images=mix.labeled + 2 * mix.pseudo,
                  validation=val_opts.validation(model, val, input_meta, rt), state=thresholds)

    kept = kept_epoch(history, val_opts)
    metrics = {"train_loss": kept["loss"], "train_acc": kept["acc"], **test_metrics(model, test, input_meta, rt)}
    record = {**asdict(opts), "strong": {"randaugment": list(opts.strong), "magnitude": "uniform in 0..M per step"},
              "unlabeled_per_step": mix.pseudo, "thresholds": thresholds.current().tolist()}
    train = train_record(cfg, mix.labeled, weak, steps_per_epoch=mix.steps)
    meta = checkpoint_meta(spec, labeled, parents, cfg, train, metrics, history, val, val_opts,
                           unlabeled=unlabeled.describe(), semi=record)
    return Trained(model.cpu(), meta, history)


def _check_parts(labeled: Dataset, unlabeled: Dataset) -> None:
    if (labeled.labels < 0).any():
        raise DplError(f"{labeled.spec}: the labeled part has samples without labels")
    for ds in (labeled, unlabeled):
        if len(ds) == 0:
            raise DplError(f"{ds.spec} ({ds.part}): no samples")
    if labeled.shape != unlabeled.shape:
        raise DplError(f"{unlabeled.spec} gives {'x'.join(map(str, unlabeled.shape))} images, the labeled "
                       f"{labeled.spec} {'x'.join(map(str, labeled.shape))}")
