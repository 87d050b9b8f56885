"""Bags of instances for multiple-instance learning (`dpl mil`): built from any classification source, as Ilse
et al.'s MNIST-bags, or read from a folder of bag folders.

Built bags. A target class, a number of bags, bag sizes drawn from N(size, size_std), rounded and clipped to at
least 1, and a seed. A bag is positive when it holds at least one instance of the target class. As in the
balanced loader of Ilse et al.'s code (AttentionDeepMIL, mnist_bags_loader.py), bags alternate positive and
negative, so half are positive (the first, and every other one after it): a negative bag draws its instances
uniformly, with replacement, from the split's other classes; a positive bag is a uniform draw of its size from
the whole split conditioned on holding the target, drawn exactly: the number of target instances from the
binomial(size, share of the target in the split) truncated to at least 1, the rest from the other classes,
in a shuffled order (the same distribution as redrawing until a target is in, without the loop). Training bags
come from the source's train split, test bags from its test split, each split from its own random stream of
the seed, so the same seed gives the same bags.

A folder of bags, `bagfolder:PATH[:SPLIT]`: PATH holds one folder of image files per bag and `labels.csv`, a
`bag,label` line per bag (label 0 or 1; a first line `bag,label` is a header). `PATH/train/` and `PATH/test/`
(each with its own `labels.csv`) are splits; a folder without them is the train split. An optional
`instances.csv` of `bag,image,label` lines gives instance labels, used only to measure (instance AUC). Bag
folders not named in `labels.csv` are left out, and said. Images are decoded by `images.decode`'s one policy.

Either way the instances are one uint8 tensor (N, C, H, W) held in memory, bag b being rows
offsets[b]:offsets[b+1]; the instance labels are hidden from training and kept for evaluation only.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import DplError, data, textfiles
from . import images, memory
from . import Dataset

FOLDER = "bagfolder"
LABELS_FILE = "labels.csv"
INSTANCES_FILE = "instances.csv"


@dataclass(frozen=True, kw_only=True)
class BagSpec:
    """How bags are built from a classification source."""

    target: str                 # class index or name, as given
    bags: int = 200             # training bags
    test_bags: int = 1000
    size: float = 10.0          # mean bag size
    size_std: float = 2.0
    seed: int = 0

    def __post_init__(self):
        for flag, n in (("--bags", self.bags), ("--test-bags", self.test_bags)):
            if n < 1:
                raise DplError(f"{flag} must be at least 1, got {n}")
        if not 0 < self.size < float("inf"):
            raise DplError(f"--bag-size must be a number > 0, got {self.size}")
        if not 0 <= self.size_std < float("inf"):
            raise DplError(f"--bag-size-std must be a number >= 0, got {self.size_std}")

    def record(self, target: int, target_name: str) -> dict:
        return {**asdict(self), "target": target, "target_name": target_name,
                "positives": "every other bag, from the first"}


@dataclass
class Bags:
    """Bags of one split. `instances` is a Dataset of every bag's instances, one after the other (labels -1:
    training never sees an instance label); bag b is rows offsets[b]:offsets[b+1]."""

    instances: Dataset
    offsets: torch.Tensor                   # int64 (B + 1,)
    labels: torch.Tensor                    # int64 (B,), 0 or 1
    names: list[str]                        # each bag's name: its folder, or bag-NNNNN
    instance_labels: torch.Tensor | None    # int64 (N,), 0 or 1: for evaluation only; None when unknown
    build: dict = field(default_factory=dict)   # how built bags were made (BagSpec.record), empty for a folder
    ignored: tuple[str, ...] = ()           # what reading a folder passed over, said aloud by the CLI

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sizes(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def spec(self) -> str:
        return self.instances.spec

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.instances.fingerprint().encode())
        h.update(json.dumps(self.build, sort_keys=True).encode())
        for t in (self.offsets, self.labels):
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def subset(self, index: torch.Tensor) -> Bags:
        """The bags at `index`, in that order."""
        sizes = self.sizes[index]
        rows = bag_rows(self.offsets[:-1][index], sizes)
        return replace(self, instances=data.rows(self.instances, rows), offsets=offsets_of(sizes),
                       labels=self.labels[index], names=[self.names[i] for i in index.tolist()],
                       instance_labels=None if self.instance_labels is None else self.instance_labels[rows])

    def held_out(self, n: int | None, seed: int) -> tuple[Bags, Bags | None]:
        """(the rest, `n` bags drawn stratified by bag label, as a labeled partition is) for --val; (self, None)
        when n is None."""
        if n is None:
            return self, None
        if not 2 <= n <= len(self) - 2:
            raise DplError(f"--val must be between 2 and {len(self) - 2} (the training split has {len(self)} bags), "
                           f"got {n}")
        val = data.labeled_indices(self.labels, 2, data.Partition(labeled=n, seed=seed))
        rest = torch.ones(len(self), dtype=torch.bool)
        rest[val] = False
        return self.subset(rest.nonzero().squeeze(1)), self.subset(val)

    def describe(self) -> dict:
        """The `data` entry of a MIL checkpoint: the instances' source, and the bags."""
        d = self.instances.describe()
        return {**d, "fingerprint": self.fingerprint(), "bags": len(self), "positive_bags": int(self.labels.sum()),
                "instances": d["n"]}


def offsets_of(sizes: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes.long(), 0)])


def bag_rows(starts: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """The instance rows of bags starting at `starts` with `sizes`, bag after bag, without a Python loop."""
    total = int(sizes.sum())
    first = torch.repeat_interleave(starts - (torch.cumsum(sizes, 0) - sizes), sizes, output_size=total)
    return first + torch.arange(total, device=sizes.device)


# ---- memory -------------------------------------------------------------------------------------------

def check_fits(sizes: list[int] | np.ndarray, shape: tuple[int, int, int], where: str) -> None:
    """Refuse, before anything is allocated, bags whose instances (uint8) or largest bag (as float32 input to
    the encoder) would take more than memory.MEMORY_SHARE of the free memory."""
    pixels, shown = int(np.prod(shape)), "x".join(map(str, shape))
    largest, total = int(np.max(sizes)), int(np.sum(sizes, dtype=np.float64))
    memory.check_fits(largest * pixels * 4, f"{where}: a bag of {largest:,} instances of {shown} as input would")
    memory.check_fits(total * pixels, f"{where}: {total:,} instances of {shown}")


def check_count(count: int, spec: BagSpec, shape: tuple[int, int, int], flag: str) -> None:
    """Price `count` bags of the spec's mean size before a single one is drawn."""
    instances = count * (spec.size + 3 * spec.size_std)
    memory.check_fits(count * 40 + instances * (int(np.prod(shape)) + 24),
                      f"{flag} {count:,} --bag-size {spec.size:g} --bag-size-std {spec.size_std:g}: {count:,} bags "
                      f"of about {spec.size:,.0f} instances of {'x'.join(map(str, shape))}")


# ---- bags built from a classification source -------------------------------------------------------------

def target_index(classes: list[str], target: str, where: str) -> int:
    """The class a target names: its name, else its index."""
    if target in classes:
        return classes.index(target)
    if target.strip().lstrip("-").isdigit() and 0 <= int(target) < len(classes):
        return int(target)
    shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    raise DplError(f"--target-class {target!r} is not a class of {where}: give an index 0..{len(classes) - 1} or a "
                   f"name ({shown})")


def split_stream(seed: int, split: str) -> np.random.Generator:
    """Each split draws its bags from its own stream of the seed."""
    return np.random.default_rng([seed % 2**32, zlib.crc32(split.encode())])


def build(ds: Dataset, spec: BagSpec, count: int) -> Bags:
    """`count` bags from the samples of `ds` (a labeled split held in memory), as the module docstring says."""
    if ds.streamed:
        raise DplError(f"{ds.spec}: bags are built from a source held in memory (its images are streamed)")
    target = target_index(ds.classes, spec.target, ds.spec)
    labels = ds.labels.numpy()
    if (labels < 0).any():
        raise DplError(f"{ds.spec}: bags are built from a labeled source; this one has unlabeled samples")
    pool_target, pool_other = np.flatnonzero(labels == target), np.flatnonzero(labels != target)
    if not len(pool_target) or not len(pool_other):
        which = "no sample of" if not len(pool_target) else "only samples of"
        raise DplError(f"{ds.spec} has {which} class {ds.classes[target]!r}: bags need both it and others")
    check_count(count, spec, ds.shape, "--bags" if ds.split == "train" else "--test-bags")
    rng = split_stream(spec.seed, ds.split)
    sizes = np.clip(np.rint(rng.normal(spec.size, spec.size_std, count)), 1, None)
    check_fits(sizes, ds.shape, f"--bag-size {spec.size:g} --bag-size-std {spec.size_std:g}")
    sizes = sizes.astype(np.int64)
    positive = np.arange(count) % 2 == 0
    # Targets per positive bag: binomial(size, share) truncated to >= 1, by its quantile function.
    from scipy.stats import binom

    share = len(pool_target) / len(labels)
    u = rng.random(count)
    no_target = (1 - share) ** sizes
    k = binom.ppf(no_target + u * (1 - no_target), sizes, share)
    n_target = np.where(positive, np.clip(np.nan_to_num(k, nan=1.0), 1, sizes), 0).astype(np.int64)
    bag_of = np.repeat(np.arange(count), sizes)
    slot = np.arange(len(bag_of)) - np.repeat(np.cumsum(sizes) - sizes, sizes)     # position within its bag
    is_target = slot < np.repeat(n_target, sizes)
    index = np.where(is_target, pool_target[rng.integers(0, len(pool_target), len(bag_of))],
                     pool_other[rng.integers(0, len(pool_other), len(bag_of))])
    order = np.lexsort((rng.random(len(bag_of)), bag_of))                          # shuffled within each bag
    index = torch.from_numpy(index[order])
    inst = replace(ds, images=ds.images[index], labels=torch.full((len(index),), -1, dtype=torch.int64), classes=[],
                   indices=index if ds.indices is None else ds.indices[index])
    return Bags(inst, offsets_of(torch.from_numpy(sizes)), torch.from_numpy(positive.astype(np.int64)),
                [f"bag-{b:05d}" for b in range(count)], (torch.from_numpy(labels)[index] == target).long(),
                spec.record(target, ds.classes[target]))


# ---- bags read from a folder of bag folders -------------------------------------------------------------

def is_folder(spec: str) -> bool:
    return spec.partition(":")[0] == FOLDER


def parse_folder_spec(spec: str) -> tuple[Path, str | None]:
    """`bagfolder:PATH[:SPLIT]` -> (absolute path, split or None)."""
    rest = spec.partition(":")[2]
    path, _, split = rest.rpartition(":")
    if not path or split not in data.SPLITS:
        path, split = rest, None
    if not path:
        raise DplError(f"{FOLDER} needs a path: {FOLDER}:PATH[:SPLIT]")
    return Path(path).expanduser().absolute(), split


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    """The rows of a small CSV file, each of len(columns) fields; a first row equal to `columns` is a header."""
    rows = textfiles.read_csv(path, "bag labels file")
    if rows and [c.lower() for c in rows[0]] == list(columns):
        rows = rows[1:]
    for n, row in enumerate(rows, 1):
        if len(row) != len(columns):
            raise DplError(f"{path}: row {n} {','.join(row)!r} is not {','.join(columns)}")
    return rows


def _label(value: str, path: Path, row: list[str]) -> int:
    if value not in ("0", "1"):
        raise DplError(f"{path}: label {value!r} in {','.join(row)!r} is not 0 or 1")
    return int(value)


def _bag_labels(folder: Path) -> dict[str, int]:
    path = folder / LABELS_FILE
    if not path.is_file():
        raise DplError(f"{folder}: no {LABELS_FILE} (a bag,label line per bag folder, label 0 or 1)")
    labels: dict[str, int] = {}
    for row in _read_csv(path, ("bag", "label")):
        if row[0] in ("", ".", "..") or "/" in row[0] or "\\" in row[0]:
            raise DplError(f"{path}: bag {row[0]!r} is not the name of a folder in {folder}")
        if row[0] in labels:
            raise DplError(f"{path}: bag {row[0]!r} is labeled twice")
        labels[row[0]] = _label(row[1], path, row)
    if not labels:
        raise DplError(f"{path}: no bags")
    return labels


def _list_bag(folder: Path, bag: str) -> images.Listing:
    """The image files of one bag folder, which must hold at least one."""
    where = folder / bag
    if not where.is_dir():
        raise DplError(f"{folder / LABELS_FILE}: bag {bag!r} has no folder {where}")
    if not any(p.suffix.lower() in images.IMAGE_SUFFIXES for p in where.iterdir()):
        raise DplError(f"{where}: an empty bag (no image files): every bag needs at least one instance")
    listing = images.list_folder(where)
    if listing.classes:
        raise DplError(f"{where}: a bag holds image files, not sub-folders ({listing.classes[0]!r})")
    return listing


def _instance_labels(folder: Path, keys: np.ndarray) -> torch.Tensor | None:
    path = folder / INSTANCES_FILE
    if not path.is_file():
        return None
    given: dict[bytes, int] = {}
    for row in _read_csv(path, ("bag", "image", "label")):
        given[os.fsencode(f"{row[0]}/{row[1]}")] = _label(row[2], path, row)
    missing = [k for k in keys if k not in given]
    if missing:
        raise DplError(f"{path}: no label for {os.fsdecode(missing[0])} ({len(missing)} images without one)")
    return torch.tensor([given[k] for k in keys], dtype=torch.int64)


def _bag_listing(folder: Path) -> tuple[list[str], torch.Tensor, images.Listing, tuple[str, ...]]:
    """(bag names, their labels, one listing of every bag's image files whose labels are the bag positions, what
    was left out) of one split's folder."""
    labels = _bag_labels(folder)
    names = list(labels)
    listed = [_list_bag(folder, b) for b in names]
    present = {p.name for p in folder.iterdir() if p.is_dir() and p.name not in ("train", "test", "val")}
    unlabeled = sorted(present - set(names))
    ignored = (f"{len(unlabeled)} bag folders in {folder} not in {LABELS_FILE} (first: {unlabeled[0]})",) if unlabeled else ()
    keys = np.concatenate([np.char.add(os.fsencode(b) + b"/", one.keys) for b, one in zip(names, listed)])
    bag_of = np.repeat(np.arange(len(names)), [len(one) for one in listed])
    listing = images.Listing(folder, (), keys, np.full(len(keys), -1, dtype=np.int32), np.zeros(len(keys), np.int64),
                             np.concatenate([one.size for one in listed]), bag_of, tuple(names))
    return names, torch.tensor([labels[b] for b in names], dtype=torch.int64), listing, ignored


def read_folder(spec: str, default_split: str = "train", resize: int | None = None,
                channels: int | None = None, workers: int | None = None) -> Bags:
    """The bags of `bagfolder:PATH[:SPLIT]`, decoded into memory at `resize` (default: the median shorter side
    of a sample, at most 224) and `channels` (default: grey when the sampled images are all grey)."""
    root, split = parse_folder_spec(spec)
    folder = images.split_folder(root, split or default_split)
    names, bag_labels, listing, ignored = _bag_listing(folder)
    rows = np.arange(len(listing))
    side, colour = (None, None) if resize and channels else images.probe(listing, rows)
    size = resize or (min(side, images.DEFAULT_MAX_SIZE) if side else None)
    if size is None:
        raise DplError(f"{folder}: none of the sampled image files can be read")
    channels = channels or colour
    check_fits(np.bincount(listing.labels, minlength=len(names)), (channels, size, size), str(folder))
    pixels, bad = images.decode_all(images.ImageStore(listing, rows, size, channels), workers)
    keep = np.ones(len(listing), dtype=bool)
    keep[bad] = False
    sizes = np.bincount(listing.labels[keep], minlength=len(names))
    if (sizes == 0).any():
        raise DplError(f"{folder / names[int(np.flatnonzero(sizes == 0)[0])]}: an empty bag (none of its image files "
                       "can be decoded)")
    instance_labels = _instance_labels(folder, listing.keys)
    kept = torch.from_numpy(np.flatnonzero(keep))
    inst = Dataset(f"{FOLDER}:{root}", split or default_split, pixels[kept],
                   torch.full((len(kept),), -1, dtype=torch.int64), [], resized=size, keys=listing.keys[keep],
                   listing=listing.fingerprint(), skipped=tuple(os.fsdecode(k) for k in listing.keys[~keep]))
    return Bags(inst, offsets_of(torch.from_numpy(sizes)), bag_labels, names,
                None if instance_labels is None else instance_labels[kept], ignored=ignored)


# ---- either -------------------------------------------------------------------------------------------------

def load(spec: str, bag_spec: BagSpec | None, *, default_split: str = "train", count: int | None = None,
         resize: int | None = None, channels: int | None = None, download: bool = False,
         workers: int | None = None) -> Bags:
    """The bags a data spec names: a bag folder, or `count` bags built by `bag_spec` from a classification source."""
    if is_folder(spec):
        return read_folder(spec, default_split, resize, channels, workers)
    if bag_spec is None:
        raise DplError(f"{spec}: bags are built from a classification source with --target-class")
    ds = data.load(spec, default_split=default_split, download=download, resize=resize, channels=channels,
                   stream=False, check_all=True, workers=workers)
    return build(ds, bag_spec, count if count is not None else bag_spec.bags)
