"""Attention-based deep multiple-instance learning (`dpl mil`; Ilse, Tomczak & Welling, ICML 2018).

An instance encoder from the registry embeds each instance of a bag as its feature vector h_k (the input of the
model's final Linear, read by `models.Taps`, as the pretext tasks read it); a pooling makes one vector or one
score of the bag, and a linear bag classifier (c, b) its logit:

    attention  a_k = softmax_k(w^T tanh(V h_k))                   z = sum_k a_k h_k     logit = c^T z + b
    gated      a_k = softmax_k(w^T (tanh(V h_k) * sigm(U h_k)))   the same
    max        s_k = c^T h_k + b, an instance logit                logit = max_k s_k     (Instance+max: sigm of
               the max is the max of the instance probabilities)
    mean       s_k as for max                                      logit = mean_k s_k    (= Embedding+mean: with a
               linear classifier, c^T mean_k h_k + b)

The loss is the binary cross-entropy of the bag logits against the bag labels (`bce`). Bags are batched: the
instances of a step's bags go through the encoder together, unpadded (batch norm sees only real instances),
and the instance scores are padded to the step's largest bag with a mask for the softmax and the max, so a bag
gets the same logit alone as in any batch (in eval mode). The instance scores (the attention weights a_k; for
max and mean the instance logits s_k) are what `dpl eval` measures against the hidden instance labels.

The checkpoint (`meta["task"] = "mil"`) holds the whole network: `encoder.*` (the registry model, `arch`; its
own final Linear is unused), `attention_v/u/w.*` and `classifier.*`; `meta["mil"]` says how, on which bags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import DplError, artifacts, losses, models
from ..data import augment
from ..data.bags import BagSpec, Bags, bag_rows
from ..data.bags import load as load_bags
from .common import (
    ModelOptions, NoiseOptions, Trained, ValOptions, checkpoint_meta, input_of, make_model, train_record
)
from ..engine.train import (
    Progress, ResumeSpec, Runtime, TrainConfig, fit, seed_everything, shuffled_batches, steps_per_epoch
)

TASK = "mil"
VAL = ValOptions(metric="bag_auc")      # --keep best: the epoch of the best validation bag AUC
VAL_FIGURES = ("bag_auc", "bag_acc")
POOLINGS = ("attention", "gated", "max", "mean")
ATTENTION = ("attention", "gated")


@dataclass(frozen=True, kw_only=True)
class MilOptions:
    pooling: str = "attention"
    attention_dim: int = 128        # D, the width of the attention's hidden layer (V, U)

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise DplError(f"unknown pooling {self.pooling!r}; valid: {', '.join(POOLINGS)}")
        if self.attention_dim < 1:
            raise DplError(f"--attention-dim must be at least 1, got {self.attention_dim}")


class MilNet(nn.Module):
    """The encoder, the pooling and the bag classifier: the one module `fit` trains and the checkpoint holds."""

    def __init__(self, encoder: nn.Module, pooling: str, attention_dim: int = 128):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        self.width = encoder.get_submodule(models.feature_layer(encoder)).in_features
        if pooling in ATTENTION:
            self.attention_v = nn.Linear(self.width, attention_dim)
            self.attention_u = nn.Linear(self.width, attention_dim) if pooling == "gated" else None
            self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(self.width, 1)
        self.taps = models.Taps(encoder, [models.FEATURES], stop=True)   # the encoder's classifier never runs

    def forward(self, x: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The instances of len(sizes) bags, one bag after the other -> (bag logits (B,), instance scores (N,))."""
        return self.pool(self.taps.tensor(x, models.FEATURES), sizes)

    def pool(self, h: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.arange(int(sizes.max()), device=h.device) < sizes[:, None]       # (B, largest bag)
        if self.pooling in ATTENTION:
            e = torch.tanh(self.attention_v(h))
            if self.attention_u is not None:
                e = e * torch.sigmoid(self.attention_u(h))
            weights = padded(self.attention_w(e).squeeze(1).float(), mask, -torch.inf).softmax(1)[mask]
            bag_of = torch.repeat_interleave(torch.arange(len(sizes), device=h.device), sizes, output_size=len(h))
            z = torch.zeros(len(sizes), h.shape[1], device=h.device).index_add_(0, bag_of, weights[:, None] * h.float())
            return self.classifier(z).squeeze(1).float(), weights
        scores = self.classifier(h).squeeze(1).float()
        if self.pooling == "max":
            return padded(scores, mask, -torch.inf).max(1).values, scores
        return padded(scores, mask, 0.0).sum(1) / sizes, scores


def padded(values: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    """(N,) values, bag after bag -> (B, largest bag), `fill` past each bag's end."""
    out = torch.full(mask.shape, fill, dtype=values.dtype, device=values.device)
    out[mask] = values
    return out


def gather_bags(idx: torch.Tensor, instances: torch.Tensor, starts: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """The instances of the bags `idx`, bag after bag (`Feed`'s gather)."""
    return instances[bag_rows(starts[idx], sizes[idx])]


# ---- training -------------------------------------------------------------------------------------------

def mil_objective(net: MilNet, labels: torch.Tensor, sizes: torch.Tensor, noise: augment.Noise, input_meta: dict,
                  rt: Runtime):
    """Bag-level binary cross-entropy of a batch of bags (their indices, then their instances concatenated)."""
    y, step_sizes = labels.float().to(rt.device), sizes.to(rt.device)
    mean, std = input_meta["mean"], input_meta["std"]

    def objective(batch):
        idx, x = batch
        logits, _ = net(augment.to_input(augment.apply(x, noise), mean, std, rt.cuda), step_sizes[idx])
        target = y[idx]
        return ({"bce": losses.bag_bce(logits, target)},
                {"acc": ((logits > 0).float() == target).float().mean()})
    return objective


def train_mil(train_bags: Bags, model_opts: ModelOptions, noise_opts: NoiseOptions, opts: MilOptions,
              cfg: TrainConfig, rt: Runtime, test: Bags | None = None, on_progress: Progress | None = None,
              resume: ResumeSpec | None = None, val: Bags | None = None, val_opts: ValOptions = VAL) -> Trained:
    """Train on the bag labels of `train_bags` (their instance labels are never read); `val` is measured during
    training (bag AUC, --keep best), `test` once trained, for the checkpoint's metrics."""
    check_trainable(train_bags)
    bag_batch = min(cfg.batch_size, len(train_bags))
    seed_everything(cfg.seed)
    encoder, spec, parents = make_model(model_opts, train_bags.instances)
    net = rt.prepare(MilNet(encoder, opts.pooling, opts.attention_dim))
    input_meta = input_of(train_bags.instances)
    noise = noise_opts.for_data(train_bags.instances)
    sizes = train_bags.sizes
    feed = rt.place(train_bags.instances.images, train_bags.offsets[:-1], sizes)
    objective = mil_objective(net, train_bags.labels, sizes, noise, input_meta, rt)
    batches = lambda epoch: feed(shuffled_batches(len(train_bags), bag_batch, cfg.seed, epoch, rt.device),  # noqa: E731
                                 gather_bags)
    history = fit(net, objective, batches, steps_per_epoch(len(train_bags), bag_batch), cfg, rt, on_progress, resume,
                  batch_images=round(bag_batch * float(sizes.float().mean())),
                  validation=validation_of(net, val, input_meta, rt, val_opts))
    last = history[-1]
    metrics = {"train_loss": last["loss"], "train_acc": last["acc"]}
    if test is not None:
        found = measure(net, test, input_meta, rt)
        figures = ("bag_auc", "bag_acc", "instance_auc", "instance_auc_positive_bags")
        metrics.update({f"test_{k}": found[k] for k in figures if k in found}, test_spec=test.spec)
    record = {"pooling": opts.pooling, "attention_dim": opts.attention_dim if opts.pooling in ATTENTION else None,
              "feature_width": net.width, "bags": train_bags.build, "bag_batch": bag_batch,
              "test": None if test is None else {"spec": test.spec, "bags": len(test)}}
    train = train_record(cfg, bag_batch, noise, unit="bags")
    meta = checkpoint_meta(spec, train_bags.instances, parents, cfg, train, metrics, history, val, val_opts,
                           task=TASK, data=train_bags.describe(), classes=["negative", "positive"], mil=record)
    return Trained(net.cpu(), meta, history)


def validation_of(net: MilNet, val: Bags | None, input_meta: dict, rt: Runtime, val_opts: ValOptions):
    """Bag AUC and accuracy of held-out bags, for --val and --keep best."""
    return val_opts.measured((lambda: measure(net, val, input_meta, rt)) if val is not None else None, VAL_FIGURES)


def check_trainable(bags: Bags) -> None:
    if len(bags) < 2 or bool(bags.labels.min() == bags.labels.max()):
        raise DplError(f"{bags.spec}: {len(bags)} bags, all {'positive' if int(bags.labels[0]) else 'negative'}: "
                       "learning from bag labels needs positive and negative bags")


# ---- evaluation -----------------------------------------------------------------------------------------

@torch.no_grad()
def predict(net: MilNet, bags: Bags, input_meta: dict, rt: Runtime, batch_size: int = 512,
            which: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(bag probabilities, instance scores, bag after bag) of the bags `which` (default: all, in order) in eval
    mode, on the CPU; each forward takes whole bags, up to `batch_size` instances (one bag at least)."""
    net.eval()
    which = torch.arange(len(bags)) if which is None else which
    sizes, starts = bags.sizes[which], bags.offsets[:-1][which]
    ends = np.cumsum(sizes.numpy())
    probs, scores, first = [], [], 0
    while first < len(which):
        last = max(first + 1, int(np.searchsorted(ends, ends[first] - sizes[first].item() + batch_size, "right")))
        idx = torch.arange(first, last)
        x = gather_bags(idx, bags.instances.images, starts, sizes).to(rt.device)
        with rt.autocast():
            logits, s = net(augment.to_input(x, input_meta["mean"], input_meta["std"], rt.cuda),
                            sizes[idx].to(rt.device))
        probs.append(torch.sigmoid(logits.float()).cpu())
        scores.append(s.float().cpu())
        first = last
    return torch.cat(probs), torch.cat(scores)


def auc(labels: torch.Tensor, scores: torch.Tensor) -> float | None:
    """ROC AUC (scikit-learn's), None where only one class is present."""
    from sklearn.metrics import roc_auc_score

    if len(labels) == 0 or bool(labels.min() == labels.max()):
        return None
    return float(roc_auc_score(labels.numpy(), scores.double().numpy()))


def measure(net: MilNet, bags: Bags, input_meta: dict, rt: Runtime, batch_size: int = 512,
            per_bag: bool = False) -> dict:
    """Bag AUC and accuracy (at probability 0.5); with instance labels, the instance AUC of the instance scores
    over every instance, and over the instances of positive bags alone (where attention must find the
    positives among their bag-mates). `per_bag` adds each bag's probability and instance scores: attention
    weights (summing to 1) for attention pooling, instance probabilities for max and mean."""
    probs, scores = predict(net, bags, input_meta, rt, batch_size)
    y = bags.labels
    result = {"bags": len(bags), "positive_bags": int(y.sum()), "instances": len(scores),
              "bag_auc": auc(y, probs), "bag_acc": float(((probs >= 0.5).long() == y).float().mean())}
    truth = bags.instance_labels
    if truth is not None:
        in_positive = torch.repeat_interleave(y, bags.sizes).bool()
        result.update(instance_auc=auc(truth, scores),
                      instance_auc_positive_bags=auc(truth[in_positive], scores[in_positive]))
    if per_bag:
        result["per_bag"] = bag_entries(net.pooling, bags, torch.arange(len(bags)), probs, scores)
    return result


def bag_entries(pooling: str, bags: Bags, which: torch.Tensor, probs: torch.Tensor, scores: torch.Tensor
                ) -> list[dict]:
    """`dpl eval --json`'s entry of each bag `which`, from `predict`'s outputs for those bags: its name, label,
    probability, and its instances' weights: attention weights (summing to 1) for attention pooling, instance
    probabilities for max and mean; with the hidden instance labels where known."""
    attention = pooling in ATTENTION
    shown = scores if attention else torch.sigmoid(scores)
    ends = torch.cumsum(bags.sizes[which], 0).tolist()
    entries = []
    for k, (b, end) in enumerate(zip(which.tolist(), ends)):
        a, e = int(bags.offsets[b]), int(bags.offsets[b + 1])
        weights = shown[end - (e - a): end]           # `predict` gives the bags `which` one after the other
        entries.append({"bag": bags.names[b], "label": int(bags.labels[b]), "prob": round(float(probs[k]), 6),
                        "attention" if attention else "scores": [round(v, 6) for v in weights.tolist()],
                        **({"instance_labels": bags.instance_labels[a:e].tolist()}
                           if bags.instance_labels is not None else {})})
    return entries


def is_mil(path: Path) -> bool:
    """Whether a file is a MIL checkpoint (False for anything unreadable: its reader will say why)."""
    return artifacts.checkpoint_task(path) == TASK


def load_model(path: Path) -> tuple[MilNet, artifacts.Checkpoint]:
    """A MIL checkpoint's network; a skeleton on the meta device is checked against the file's tensors first."""
    ckpt = artifacts.load_checkpoint(path, task=TASK)
    record = ckpt.meta.get("mil")
    if not isinstance(record, dict) or record.get("pooling") not in POOLINGS:
        raise DplError(f"{path}: corrupt or missing metadata value for 'mil'")
    dim = record.get("attention_dim") or 1

    def build() -> MilNet:
        try:
            return MilNet(models.build(ckpt.arch), record["pooling"], dim)
        except (DplError, TypeError) as e:
            raise DplError(f"{path}: {e}") from None

    with torch.device("meta"):
        artifacts.check_state(build(), ckpt.tensors, path)
    net = build()
    net.load_state_dict(ckpt.tensors)
    return net, ckpt


MAX_PLOTTED_BAGS = 8     # bags in one figure of `dpl plot bag`, a band each


def plotted_bags(path: Path, bag_indices: list[int], data_spec: str | None, rt: Runtime, batch_size: int = 512,
                 download: bool = False) -> dict:
    """`dpl plot bag`: the bags `bag_indices` (positions) of a MIL checkpoint's test bags (or `data_spec`'s),
    each as `dpl eval --json` gives it (`bag_entries`) plus its position `index` and its instances' `images`
    (uint8 (n, C, H, W)); only those bags go through the network."""
    which = list(dict.fromkeys(bag_indices))
    if not which or len(which) > MAX_PLOTTED_BAGS:
        raise DplError(f"--bag: 1 to at most {MAX_PLOTTED_BAGS} bags in one figure, got {len(which)}")
    net, ckpt = load_model(path)
    bags = test_bags_of(ckpt.meta, data_spec, download, rt.workers)
    outside = [b for b in which if not 0 <= b < len(bags)]
    if outside:
        raise DplError(f"--bag {outside[0]}: out of range, {bags.spec} has {len(bags)} bags (0..{len(bags) - 1})")
    chosen = torch.tensor(which)
    probs, scores = predict(rt.prepare(net), bags, ckpt.input, rt, batch_size, chosen)
    entries = bag_entries(net.pooling, bags, chosen, probs, scores)
    for entry, b in zip(entries, which):
        entry.update(index=b, images=bags.instances.images[int(bags.offsets[b]): int(bags.offsets[b + 1])])
    build = ckpt.meta["mil"].get("bags") or {}
    return {"checkpoint": str(path), "data": bags.spec, "pooling": net.pooling, "target": build.get("target_name"),
            "bags": entries}


def test_bags_of(meta: dict, data_spec: str | None = None, download: bool = False,
                 workers: int | None = None) -> Bags:
    """The bags a MIL checkpoint is measured on: by default its own test bags, rebuilt from the recorded bag
    spec on the test split of its source (a bag folder: its test split); `data_spec` names other data (built
    bags: with the recorded spec; the test bags' count)."""
    made = meta.get("data", {})
    source = str(made.get("spec", "")).rpartition(":")[0]
    build = meta["mil"].get("bags") or {}
    try:
        spec = BagSpec(**{k: build[k] for k in ("bags", "test_bags", "size", "size_std", "seed")},
                       target=str(build["target_name"])) if build else None
    except (KeyError, TypeError):
        raise DplError("corrupt metadata value for 'mil': the bags it was trained on") from None
    size, channels = meta["input"]["size"], meta["input"]["channels"]
    # Decoded (bag folders) or resized (a source) to the size the model takes: a no-op for its own source.
    bags = load_bags(data_spec or source, spec, default_split="test", count=spec.test_bags if spec else None,
                     resize=size, channels=channels, download=download, workers=workers)
    if tuple(bags.instances.shape) != (channels, size, size):
        raise DplError(f"the model takes {channels}x{size}x{size} instances, {bags.spec} has "
                       f"{'x'.join(map(str, bags.instances.shape))}")
    return bags


def evaluate_checkpoint(path: Path, data_spec: str | None, rt: Runtime, batch_size: int = 512,
                        download: bool = False, per_bag: bool = False) -> dict:
    """`dpl eval` of a MIL checkpoint: what it is, and `measure` on its test bags (or `data_spec`'s)."""
    net, ckpt = load_model(path)
    bags = test_bags_of(ckpt.meta, data_spec, download, rt.workers)
    net = rt.prepare(net)
    found = measure(net, bags, ckpt.input, rt, batch_size, per_bag)
    record = ckpt.meta["mil"]
    return {"checkpoint": str(path), "task": TASK, "data": bags.spec, "arch": ckpt.arch.get("name"),
            "params": models.count_params(net), "pooling": record["pooling"],
            "target": (record.get("bags") or {}).get("target_name"), "seed": ckpt.meta.get("seed"),
            "weights": ckpt.meta.get("weights"), **found}
