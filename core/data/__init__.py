"""Dataset sources, split specs, labeled/unlabeled partitions and dataset fingerprints.

A source is held in memory as a uint8 tensor (N, C, H, W) with int64 labels, so batching is indexing and
needs no per-sample Python work. Image files (`imagefolder:`, `tar:`) too, when their decoded pixels fit
in IN_MEMORY_BYTES; larger ones stay on disk as an `images.ImageStore` that DataLoader workers decode.
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

from .. import DplError
from . import images as image_files
from .images import ImageStore

SOURCES = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "stl10", "imagefolder:PATH", "tar:PATH")
FILE_SOURCES = ("imagefolder", "tar")
BOX_SOURCES = ("scenes", "coco")     # data with boxes: core.scenes reads them
SPLITS = ("train", "test", "val", "labeled", "unlabeled")
IN_MEMORY_BYTES = 1 << 30     # decoded image files up to this size are held in memory, larger ones streamed
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
HFLIP_OK = {"fashion-mnist", "cifar10", "cifar100", "stl10", "imagefolder", "tar"}


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


@dataclass
class Dataset:
    source: str                       # "digits", "fashion-mnist", "imagefolder:/abs/path", ...
    split: str                        # "train", "test", ...
    images: torch.Tensor | ImageStore # uint8 (N, C, H, W), in memory or decoded on demand
    labels: torch.Tensor              # int64 (N,), -1 where unknown
    classes: list[str]
    part: str = "all"
    partition: Partition = field(default_factory=Partition)
    holdout: Holdout = field(default_factory=Holdout)   # what was held out of it for validation
    indices: torch.Tensor | None = None  # positions in the full split, when a part was taken
    resized: int | None = None           # the side the images were resized to (--resize), if they were
    keys: np.ndarray | None = None       # image files: each sample's path or shard key (bytes)
    listing: str | None = None           # image files: the fingerprint of the source as listed
    skipped: tuple[str, ...] = ()        # image files found unreadable and left out
    ignored: tuple[str, ...] = ()        # what listing the source passed over
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def streamed(self) -> bool:
        return isinstance(self.images, ImageStore)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def kind(self) -> str:
        return self.source.partition(":")[0]

    @property
    def hflip(self) -> bool:
        return all(m.partition(":")[0] in HFLIP_OK for m in union_members(self.source))

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.kind in NORMALIZATION:
            return NORMALIZATION[self.kind]
        return image_files.normalization(self.images)

    @property
    def spec(self) -> str:
        return f"{self.source}:{self.split}"

    def describe(self) -> dict:
        """The data spec as recorded in artifact metadata."""
        resized = {} if self.resized is None else {"resize": self.resized}
        files = {} if self.keys is None else {"channels": self.shape[0]}
        if self.skipped:
            files.update({"skipped": len(self.skipped), "skipped_files": list(self.skipped[:MAX_LISTED])})
        return {"spec": self.spec, "part": self.part, **self.partition.describe(), **self.holdout.describe(), **resized,
                "n": len(self), "fingerprint": self.fingerprint(), **files}

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self._hash_content()
        return self._fingerprint

    def _hash_content(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"source": self.source, "split": self.split, "part": self.part,
                             **self.partition.describe(), **self.holdout.describe()}, sort_keys=True).encode())
        h.update(json.dumps(list(self.shape)).encode())
        if self.listing is not None:       # image files: the listing (names, sizes), not the pixels
            h.update(self.listing.encode())
            return h.hexdigest()
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()


def data_root() -> Path:
    return Path(os.environ.get("DPL_DATA", Path.home() / ".cache" / "dpl"))


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`NAME[:SPLIT]` (or `imagefolder:PATH[:SPLIT]`, `tar:PATH[:SPLIT]`) -> (source, split or None).
    A union `A+B[:SPLIT]` gives ("A+B", split): one split for all its sources, written after the last."""
    members = union_members(spec)
    if len(members) == 1:
        return _parse_one(spec)
    parsed = [_parse_one(m) for m in members]
    if any(split for _, split in parsed[:-1]):
        raise DplError(f"{spec}: a union takes one split for all its sources, after the last: A+B[:SPLIT]")
    sources = [source for source, _ in parsed]
    twice = next((s for i, s in enumerate(sources) if s in sources[:i]), None)
    if twice is not None:
        raise DplError(f"{spec}: {twice} appears twice in the union")
    return "+".join(sources), parsed[-1][1]


def union_members(spec: str) -> list[str]:
    """The sources of a union `A+B+...` ([spec] for a single source), split at each "+" that starts a known
    source; a "+" inside the path of image files (imagefolder:/data/c++) stays in it."""
    kinds = {s.partition(":")[0] for s in SOURCES}
    pieces: list[str] = []
    for piece in spec.split("+"):
        if pieces and piece.partition(":")[0] not in kinds and pieces[-1].partition(":")[0] in FILE_SOURCES:
            pieces[-1] += "+" + piece
        else:
            pieces.append(piece)
    return pieces


def _parse_one(spec: str) -> tuple[str, str | None]:
    kind, _, rest = spec.partition(":")
    if kind in FILE_SOURCES:
        path, _, split = rest.rpartition(":")
        if not path or split not in SPLITS:
            path, split = rest, None
        if not path:
            raise DplError(f"{kind} needs a path: {kind}:PATH[:SPLIT]")
        return f"{kind}:" + str(Path(path).expanduser().absolute()), split
    name, _, split = spec.partition(":")
    if name in BOX_SOURCES:
        raise DplError(f"{spec}: data with boxes, for detectors (--arch frcnn-...) and dpl wsddn; this command or "
                       "model takes classification data")
    if name not in SOURCES:
        raise DplError(f"unknown dataset {name!r}; valid: {', '.join(SOURCES)}")
    return name, split or None


MAX_LISTED = 1000     # skipped files named in an artifact's metadata (all are counted)


def is_image_files(spec: str) -> bool:
    """Whether a data spec names image files (`imagefolder:`, `tar:`), decoded at a size of dpl's choosing
    (a union: whether any of its sources does)."""
    return any(m.partition(":")[0] in FILE_SOURCES for m in union_members(spec))


def load(spec: str, *, default_split: str = "train", partition: Partition = Partition(),
         part: str | None = None, download: bool = False, resize: int | None = None,
         channels: int | None = None, stream: bool | None = None, check_all: bool = False,
         workers: int | None = None) -> Dataset:
    """Load the data a command names. `part` defaults to labeled for training commands, see callers.

    `resize` S: in-memory tensors are resized to S x S once; image files are decoded at S (their shorter
    side, centre-cropped), by default the median shorter side of a sample of them, at most 224.
    `channels` fixes image files' mode (a teacher's input), else grey when the sampled images are all grey.
    `stream` None holds image files in memory when their decoded pixels fit in IN_MEMORY_BYTES; True and
    False force a path. `check_all` decodes a streamed source once to leave out its unreadable files (the
    training commands, which visit every sample every epoch, need this; label and eval skip as they go).
    """
    source, split = parse_spec(spec)
    split = split or default_split
    if len(union_members(source)) > 1:
        return _union(source, split, partition, part, download, resize, channels, stream, workers)
    if split in ("labeled", "unlabeled"):
        if part not in (None, split):
            raise DplError(f"split {split!r} conflicts with --part {part}")
        split, part = "train", split
    if resize is not None and not 1 <= resize <= image_files.MAX_SIZE:
        raise DplError(f"--resize must be between 1 and {image_files.MAX_SIZE}, got {resize}")
    if is_image_files(source):
        ds = _image_files(source, split, resize, channels)
        ds = take_part(ds, partition, part or "all")
        return _hold(ds, stream, check_all, workers)
    images, labels, classes = _load_source(source, split, download)
    ds = Dataset(source, split, images, labels, classes)
    ds = take_part(ds, partition, part or "all")
    return resize_to(ds, resize) if resize else ds


def _union(source: str, split: str, partition: Partition, part: str | None, download: bool, resize: int | None,
           channels: int | None, stream: bool | None, workers: int | None) -> Dataset:
    """The images of several sources, concatenated in order, all at one size and channel count; their labels
    unknown (-1), since each source has its own label space: the shared pool that several experts label."""
    if partition.active or part not in (None, "all") or split in ("labeled", "unlabeled"):
        raise DplError(f"{source}: a union of sources has no labels to partition (each has its own classes)")
    if stream:
        raise DplError(f"{source}: a union is held in memory; --stream cannot apply")
    if resize is not None and not 1 <= resize <= image_files.MAX_SIZE:
        raise DplError(f"--resize must be between 1 and {image_files.MAX_SIZE}, got {resize}")
    parts = [load(f"{m}:{split}", download=download, resize=resize, channels=channels, stream=False, check_all=True,
                  workers=workers) for m in union_members(source)]
    if len({ds.shape for ds in parts}) > 1:
        shapes = ", ".join(f"{ds.spec} {'x'.join(map(str, ds.shape))}" for ds in parts)
        fix = ("their channel counts differ, which --resize does not change" if len({ds.shape[0] for ds in parts}) > 1
               else "give --resize S to resize them alike")
        raise DplError(f"{source}: a union needs images of one size and channel count, and it has {shapes}: {fix}")
    images = torch.cat([ds.images for ds in parts])
    return Dataset(source, split, images, torch.full((len(images),), -1, dtype=torch.int64), [], resized=resize,
                   skipped=tuple(f for ds in parts for f in ds.skipped))


def _image_files(source: str, split: str, resize: int | None, channels: int | None) -> Dataset:
    kind, _, path = source.partition(":")
    if kind == "imagefolder":
        listing = image_files.list_folder(image_files.split_folder(Path(path), split))
    else:
        root = Path(path)
        listing = image_files.list_shards(root if root.is_file() else image_files.split_folder(root, split))
    rows = np.arange(len(listing))
    side, colour = (None, None) if resize and channels else image_files.probe(listing, rows)
    size = resize or (min(side, image_files.DEFAULT_MAX_SIZE) if side else None)
    if size is None:
        raise DplError(f"{listing.root}: none of the sampled image files can be read")
    store = ImageStore(listing, rows, size, channels or colour)
    return Dataset(source, split, store, torch.from_numpy(listing.labels.copy()), list(listing.classes),
                   resized=size, keys=listing.keys, listing=listing.fingerprint(), ignored=listing.ignored)


def _hold(ds: Dataset, stream: bool | None, check_all: bool, workers: int | None) -> Dataset:
    """Image files into memory (small) or left streamed (large); unreadable files left out and named."""
    if stream is None:
        stream = ds.images.nbytes > IN_MEMORY_BYTES
    if stream and not check_all:
        return ds
    pixels, bad = image_files.decode_all(ds.images, workers, keep_pixels=not stream)
    if len(ds) and len(bad) == len(ds):
        raise DplError(f"{ds.images.listing.root}: none of its {len(ds)} image files can be decoded")
    skipped = tuple(ds.images.keys_of(bad))
    keep = np.ones(len(ds), dtype=bool)
    keep[bad] = False
    kept = torch.from_numpy(np.flatnonzero(keep))
    images = ds.images if stream else pixels
    if len(bad):
        images = image_files.rows_of(images, kept)
    return replace(ds, images=images, labels=ds.labels[kept], keys=ds.keys[keep],
                   indices=None if ds.indices is None else ds.indices[kept], skipped=skipped)


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
    return _rows(ds, idx, part=part, partition=partition)


def _rows(ds: Dataset, idx: torch.Tensor, **changes) -> Dataset:
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
    return _rows(ds, rest.nonzero().squeeze(1), holdout=holdout), _rows(ds, val, part="val")


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


def resize_to(ds: Dataset, size: int, batch_size: int = 4096) -> Dataset:
    """The dataset with its uint8 images resized to size x size (bilinear; antialiased when shrinking).

    Done once, in batches, so a small source (digits' 8x8) can feed models or pretext grids that need
    larger images. The fingerprint follows the new pixels.
    """
    if not 1 <= size <= image_files.MAX_SIZE:
        raise DplError(f"--resize must be between 1 and {image_files.MAX_SIZE}, got {size}")
    c, h, w = ds.shape
    if (h, w) == (size, size):
        return ds
    if ds.streamed:               # image files are decoded at the new side
        return replace(ds, images=ImageStore(ds.images.listing, ds.images.rows, size, c), resized=size)
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
