"""Dataset sources, split specs, labeled/unlabeled partitions and dataset fingerprints.

Every source is held in memory as a uint8 tensor (N, C, H, W) with int64 labels, so batching is
indexing and needs no per-sample Python work.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dpl.core import DplError

SOURCES = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "stl10", "imagefolder:PATH")
PARTS = ("labeled", "unlabeled", "all")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# Per-channel mean/std of each source's training split (pixel values in [0, 1]).
NORMALIZATION = {
    "digits": ((0.3053,), (0.3759,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}
# Sources whose classes survive a horizontal flip (digits and letters do not).
HFLIP_OK = {"fashion-mnist", "cifar10", "cifar100", "stl10", "imagefolder"}


@dataclass(frozen=True)
class Partition:
    """A deterministic labeled/unlabeled split of a training split."""

    labeled_per_class: int | None = None
    labeled: int | None = None
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.labeled_per_class is not None or self.labeled is not None

    def describe(self) -> dict:
        if not self.active:
            return {}
        key = "labeled_per_class" if self.labeled_per_class is not None else "labeled"
        return {key: getattr(self, key), "split_seed": self.seed}


@dataclass
class Dataset:
    source: str                       # "digits", "fashion-mnist", "imagefolder:/abs/path", ...
    split: str                        # "train", "test", ...
    images: torch.Tensor              # uint8 (N, C, H, W)
    labels: torch.Tensor              # int64 (N,), -1 where unknown
    classes: list[str]
    part: str = "all"
    partition: Partition = field(default_factory=Partition)
    indices: torch.Tensor | None = None  # positions in the full split, when a part was taken
    resized: int | None = None           # the side the images were resized to (--resize), if they were
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def kind(self) -> str:
        return "imagefolder" if self.source.startswith("imagefolder:") else self.source

    @property
    def hflip(self) -> bool:
        return self.kind in HFLIP_OK

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.kind in NORMALIZATION:
            return NORMALIZATION[self.kind]
        x = self.images.float().div_(255)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())

    @property
    def spec(self) -> str:
        return f"{self.source}:{self.split}"

    def describe(self) -> dict:
        """The data spec as recorded in artifact metadata."""
        resized = {} if self.resized is None else {"resize": self.resized}
        return {"spec": self.spec, "part": self.part, **self.partition.describe(), **resized,
                "n": len(self), "fingerprint": self.fingerprint()}

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self._hash_content()
        return self._fingerprint

    def _hash_content(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"source": self.source, "split": self.split, "part": self.part,
                             **self.partition.describe()}, sort_keys=True).encode())
        h.update(json.dumps(list(self.shape)).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()


def data_root() -> Path:
    return Path(os.environ.get("DPL_DATA", Path.home() / ".cache" / "dpl"))


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`NAME[:SPLIT]` (or `imagefolder:PATH[:SPLIT]`) -> (source, split or None)."""
    if spec.startswith("imagefolder:"):
        rest = spec[len("imagefolder:"):]
        path, _, split = rest.rpartition(":")
        if not path or split not in ("train", "test", "val", "labeled", "unlabeled"):
            path, split = rest, None
        if not path:
            raise DplError("imagefolder needs a path: imagefolder:PATH[:SPLIT]")
        return "imagefolder:" + str(Path(path).expanduser().resolve()), split
    name, _, split = spec.partition(":")
    if name not in SOURCES:
        raise DplError(f"unknown dataset {name!r}; valid: {', '.join(SOURCES)}")
    return name, split or None


def load(spec: str, *, default_split: str = "train", partition: Partition = Partition(),
         part: str | None = None, download: bool = False) -> Dataset:
    """Load the data a command names. `part` defaults to labeled for training commands, see callers."""
    source, split = parse_spec(spec)
    split = split or default_split
    if split in ("labeled", "unlabeled"):
        if part not in (None, split):
            raise DplError(f"split {split!r} conflicts with --part {part}")
        split, part = "train", split
    images, labels, classes = _load_source(source, split, download)
    ds = Dataset(source, split, images, labels, classes)
    return take_part(ds, partition, part or "all")


def take_part(ds: Dataset, partition: Partition, part: str) -> Dataset:
    if part not in PARTS:
        raise DplError(f"unknown part {part!r}; valid: {', '.join(PARTS)}")
    if part == "all" and not partition.active:
        return ds
    if not partition.active:
        raise DplError(f"--part {part} needs --labeled-per-class or --labeled")
    labeled = labeled_indices(ds.labels, ds.num_classes, partition)
    if part == "labeled":
        idx = labeled
    elif part == "unlabeled":
        mask = torch.ones(len(ds), dtype=torch.bool)
        mask[labeled] = False
        idx = mask.nonzero().squeeze(1)
    else:
        idx = torch.arange(len(ds))
    return replace(ds, images=ds.images[idx], labels=ds.labels[idx], part=part,
                   partition=partition, indices=idx)


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


# ---- sources ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _load_source(source: str, split: str, download: bool):
    if source == "digits":
        return _digits(split)
    if source == "fashion-mnist":
        return _fashion_mnist(split, download)
    if source.startswith("imagefolder:"):
        return _imagefolder(Path(source[len("imagefolder:"):]), split)
    return _torchvision(source, split, download)


def _check_split(source: str, split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise DplError(f"{source} has no split {split!r}; valid: {', '.join(valid)}")


def _digits(split: str):
    _check_split("digits", split, ("train", "test"))
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    # digits ships without a test split: a fixed stratified quarter of each class is the test set.
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        members = np.flatnonzero(y == c)
        test[rng.permutation(members)[: len(members) // 4]] = True
    keep = test if split == "test" else ~test
    return torch.from_numpy(x[keep].copy()), torch.from_numpy(y[keep].copy()), [str(c) for c in range(10)]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        dims = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError, zlib.error) as e:
        raise DplError(f"{path}: unreadable IDX file ({e})") from None


def _fashion_mnist(split: str, download: bool):
    _check_split("fashion-mnist", split, ("train", "test"))
    prefix = "train" if split == "train" else "t10k"
    for folder in (data_root() / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")):
        img = folder / f"{prefix}-images-idx3-ubyte.gz"
        lab = folder / f"{prefix}-labels-idx1-ubyte.gz"
        if img.exists() and lab.exists():
            x = torch.from_numpy(_read_idx(img).copy())[:, None]
            y = torch.from_numpy(_read_idx(lab).astype(np.int64))
            if len(x) != len(y):
                raise DplError(f"{folder}: {len(x)} images but {len(y)} labels")
            return x, y, list(FASHION_CLASSES)
    if not download:
        raise DplError(f"fashion-mnist not found in {data_root() / 'fashion-mnist'} or "
                       "/usr/share/datasets/fashion-mnist; apt-get install dataset-fashion-mnist, "
                       "set DPL_DATA, or pass --download")
    return _torchvision("fashion-mnist", split, download)


def _torchvision(source: str, split: str, download: bool):
    import torchvision.datasets as tvd

    root = data_root() / source
    valid = {"stl10": ("train", "test", "unlabeled"), "svhn": ("train", "test", "extra")}.get(source, ("train", "test"))
    _check_split(source, split, valid)
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100, "svhn": tvd.SVHN, "stl10": tvd.STL10}[source]
    try:
        if source in ("svhn", "stl10"):
            ds = cls(str(root), split=split, download=download)
        else:
            ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError as e:
        hint = "" if download else "; pass --download to fetch it, or set DPL_DATA"
        raise DplError(f"{source} not found under {root}{hint} ({e})") from None
    data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(np.asarray(ds.data))
    if data.ndim == 3:                     # (N, H, W) grey
        data = data[:, None]
    elif data.shape[-1] == 3:              # (N, H, W, C) colour
        data = data.permute(0, 3, 1, 2)
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = ds.labels
    labels = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    classes = list(getattr(ds, "classes", None) or [str(c) for c in range(int(labels.max()) + 1)])
    return data.contiguous(), labels, classes


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _imagefolder(root: Path, split: str):
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DplError(f"{root}: no such folder")
    folder = root / split if (root / split).is_dir() else root
    if folder == root and split != "train" and any((root / s).is_dir() for s in ("train", "test", "val")):
        raise DplError(f"{root} has no {split!r} sub-folder")
    if folder == root and split != "train":
        raise DplError(f"{root} has no {split!r} sub-folder (a flat image folder is the train split)")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise DplError(f"{folder}: an image folder needs at least 2 class sub-folders, found {len(classes)}")
    files, labels = [], []
    for c, name in enumerate(classes):
        members = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += members
        labels += [c] * len(members)
    if not files:
        raise DplError(f"{folder}: no image files in its class sub-folders")
    pictures = []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                pictures.append(im.copy())
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DplError(f"{p}: unreadable image ({e.__class__.__name__})") from None
    grey = all(im.mode in ("L", "1", "I;16", "I") for im in pictures)
    mode = "L" if grey else "RGB"
    side = min(min(im.size) for im in pictures)
    arrays = []
    for im in pictures:
        im = im.convert(mode)
        if im.size != (side, side):
            im = im.resize((side, side), Image.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrays))
    x = x[:, None] if grey else x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.tensor(labels, dtype=torch.int64), classes


def resize(ds: Dataset, size: int, batch_size: int = 4096) -> Dataset:
    """The dataset with its uint8 images resized to size x size (bilinear; antialiased when shrinking).

    Done once, in batches, so a small source (digits' 8x8) can feed models or pretext grids that need
    larger images. The fingerprint follows the new pixels.
    """
    if size < 1:
        raise DplError(f"--resize must be at least 1, got {size}")
    c, h, w = ds.shape
    if (h, w) == (size, size):
        return ds
    try:
        out = torch.empty((len(ds), c, size, size), dtype=torch.uint8)
    except RuntimeError:        # the allocator refused: far more than this machine holds
        raise DplError(f"--resize {size}: {len(ds)} images of {c}x{size}x{size} do not fit in memory") from None
    for start in range(0, len(ds), batch_size):
        chunk = ds.images[start: start + batch_size].float()
        chunk = torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=size < min(h, w))
        out[start: start + batch_size] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return replace(ds, images=out, resized=size)
