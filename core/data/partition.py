"""Which samples of a split a command uses: `Partition` (labeled/unlabeled, stratified, seeded) and its parts,
`Holdout` (a validation set held out of labeled data), and taking rows of a `Dataset`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from .. import DplError
from . import images as image_files

if TYPE_CHECKING:
    from .dataset import Dataset

PARTS = ("labeled", "unlabeled", "all")


@dataclass(frozen=True, kw_only=True)
class Partition:
    """A deterministic labeled/unlabeled split of a training split."""

    labeled_per_class: int | None = None
    labeled: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.labeled_per_class is not None and self.labeled is not None:
            raise DplError("give --labeled-per-class or --labeled, not both")
        if (self.labeled_per_class or 1) < 1 or (self.labeled or 1) < 1:
            raise DplError("--labeled-per-class and --labeled must be at least 1")

    @property
    def active(self) -> bool:
        return self.labeled_per_class is not None or self.labeled is not None

    def describe(self) -> dict:
        if not self.active:
            return {}
        key = "labeled_per_class" if self.labeled_per_class is not None else "labeled"
        return {key: getattr(self, key), "split_seed": self.seed}


@dataclass(frozen=True)
class Holdout:
    """A validation set held out of a labeled training set: stratified, deterministic, never trained on."""

    per_class: int | None = None
    total: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.per_class is not None and self.total is not None:
            raise DplError("give --val-per-class or --val, not both")
        if (self.per_class or 1) < 1 or (self.total or 1) < 1:
            raise DplError("--val-per-class and --val must be at least 1")

    @property
    def active(self) -> bool:
        return self.per_class is not None or self.total is not None

    def describe(self) -> dict:
        if not self.active:
            return {}
        key, n = ("val_per_class", self.per_class) if self.per_class is not None else ("val", self.total)
        return {key: n, "val_seed": self.seed}


def take_part(ds: Dataset, partition: Partition, part: str) -> Dataset:
    if part not in PARTS:
        raise DplError(f"unknown part {part!r}; valid: {', '.join(PARTS)}")
    if part == "all" and not partition.active:
        return ds
    if not partition.active:
        raise DplError(f"--part {part} needs --labeled-per-class or --labeled")
    if (ds.labels < 0).any():
        raise DplError(f"{ds.spec}: unlabeled samples (no class), and a labeled/unlabeled partition "
                       f"(--labeled-per-class, --labeled) needs a split whose samples all have labels")
    labeled = labeled_indices(ds.labels, ds.num_classes, partition)
    if part == "labeled":
        idx = labeled
    elif part == "unlabeled":
        mask = torch.ones(len(ds), dtype=torch.bool)
        mask[labeled] = False
        idx = mask.nonzero().squeeze(1)
    else:
        idx = torch.arange(len(ds))
    return rows(ds, idx, part=part, partition=partition)


def rows(ds: Dataset, idx: torch.Tensor, **changes) -> Dataset:
    """The samples of `ds` at `idx` (positions in `ds`), with their positions in the full split."""
    return replace(ds, images=image_files.rows_of(ds.images, idx), labels=ds.labels[idx],
                   indices=idx if ds.indices is None else ds.indices[idx],
                   keys=None if ds.keys is None else ds.keys[idx.numpy()], **changes)


def hold_out(ds: Dataset, holdout: Holdout) -> tuple[Dataset, Dataset | None]:
    """(training rest, validation part) of a labeled set; (ds, None) when nothing is held out. The validation
    part is chosen as a labeled partition is (stratified, seeded) and must leave every class a training sample."""
    if not holdout.active:
        return ds, None
    if (ds.labels < 0).any():
        raise DplError(f"{ds.spec}: a validation set is held out of labeled data, and this has unlabeled samples")
    counts = torch.bincount(ds.labels, minlength=ds.num_classes)
    if holdout.total is not None and holdout.total < ds.num_classes:
        raise DplError(f"--val {holdout.total} is fewer than the {ds.num_classes} classes")
    quota = holdout.per_class if holdout.per_class is not None else -(-holdout.total // ds.num_classes)
    short = (counts <= quota).nonzero().squeeze(1).tolist()
    if short:
        c, flag = short[0], f"--val-per-class {holdout.per_class}" if holdout.per_class else f"--val {holdout.total}"
        raise DplError(f"{flag} leaves class {ds.classes[c]} no training sample: it has {int(counts[c])} in "
                       f"{ds.spec} ({ds.part})")
    val = labeled_indices(ds.labels, ds.num_classes,
                          Partition(labeled_per_class=holdout.per_class, labeled=holdout.total, seed=holdout.seed))
    rest = torch.ones(len(ds), dtype=torch.bool)
    rest[val] = False
    return rows(ds, rest.nonzero().squeeze(1), holdout=holdout), rows(ds, val, part="val")


def labeled_indices(labels: torch.Tensor, num_classes: int, partition: Partition) -> torch.Tensor:
    """Stratified, deterministic choice of labeled samples: sorted positions in the split."""
    if (labels < 0).any():
        raise DplError("a labeled/unlabeled partition needs a split whose samples all have labels")
    counts = torch.bincount(labels, minlength=num_classes)
    if partition.labeled_per_class is not None:
        if partition.labeled_per_class < 1:
            raise DplError("--labeled-per-class must be at least 1")
        quota = torch.full((num_classes,), partition.labeled_per_class)
    else:
        n = partition.labeled
        if n < num_classes:
            raise DplError(f"--labeled {n} is fewer than the {num_classes} classes")
        quota = torch.full((num_classes,), n // num_classes)
        quota[: n % num_classes] += 1
    short = (quota > counts).nonzero().squeeze(1).tolist()
    if short:
        c = short[0]
        raise DplError(f"class {c} has only {int(counts[c])} samples, fewer than the "
                       f"{int(quota[c])} labeled asked for")
    gen = torch.Generator().manual_seed(partition.seed)
    order = torch.randperm(len(labels), generator=gen)
    # Stable sort by class keeps the random order within each class; take each class's first quota.
    by_class = order[torch.argsort(labels[order], stable=True)]
    starts = torch.cumsum(counts, 0) - counts
    chosen = [by_class[starts[c]: starts[c] + quota[c]] for c in range(num_classes)]
    return torch.cat(chosen).sort().values


def held_out_images(data, n: int | None, seed: int):
    """(the rest, `n` images drawn by a permutation seeded `seed`) of image data that `subset`s itself and keeps
    a `record` (BoxData, PoseData), for --val; (data, None) when n is None. The rest's record counts `val_images`."""
    if n is None:
        return data, None
    if not 1 <= n < len(data):
        raise DplError(f"--val must be between 1 and {len(data) - 1} (the training part has {len(data)} images), "
                       f"got {n}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    rest, val = data.subset(order[n:].sort().values), data.subset(order[:n].sort().values)
    return replace(rest, record={**rest.record, "val_images": n}), val


def split_images(n: int, labeled: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labeled, unlabeled) positions among n images, each sorted: `labeled` of them drawn by a permutation seeded
    `seed`; all labeled when `labeled` is None."""
    if labeled is None:
        return torch.arange(n), torch.zeros(0, dtype=torch.int64)
    if not 1 <= labeled < n:
        raise DplError(f"--labeled must be between 1 and {n - 1} (the split has {n} images), got {labeled}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:labeled].sort().values, order[labeled:].sort().values


def part_of_images(data, labeled: int | None, seed: int, part: str):
    """The labeled, unlabeled or whole part of image data that `subset`s itself and keeps a `record` (BoxData,
    PoseData) under the split `split_images(labeled, seed)`, its record saying which (`part`, `labeled_images`,
    `split_seed`), so that label and distill find the same images."""
    if part not in PARTS:
        raise DplError(f"--part must be labeled, unlabeled or all, got {part!r}")
    if labeled is None and part != "all":
        raise DplError(f"--part {part} needs a split of the images: give --labeled N")
    labeled_idx, unlabeled_idx = split_images(len(data), labeled, seed)
    picked = data if part == "all" else data.subset(labeled_idx if part == "labeled" else unlabeled_idx)
    split = {"labeled_images": labeled, "split_seed": seed} if labeled is not None else {}
    return replace(picked, record={**picked.record, "part": part, **split})
