"""Dataset sources and `NAME[:SPLIT]` specs: the names a `--data` takes, unions `A+B[:SPLIT]`, and reading the
built-in sources (digits from scikit-learn, Fashion-MNIST's IDX files, torchvision's datasets) as uint8 tensors.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .. import DplError

SOURCES = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "stl10", "imagefolder:PATH", "tar:PATH")
FILE_SOURCES = ("imagefolder", "tar")
BOX_SOURCES = ("scenes", "coco")     # data with boxes: core.scenes reads them
POSE_SOURCES = ("poses", "coco-keypoints")     # data with keypoints: core.data.poses (and the COCO keypoint reader)
SPLITS = ("train", "test", "val", "labeled", "unlabeled")

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
    if name in POSE_SOURCES:
        raise DplError(f"{spec}: data with keypoints, for keypoint models (dpl teach, label, distill, eval); this "
                       "command or model takes classification data")
    if name not in SOURCES:
        raise DplError(f"unknown dataset {name!r}; valid: {', '.join(SOURCES)}")
    return name, split or None


def is_image_files(spec: str) -> bool:
    """Whether a data spec names image files (`imagefolder:`, `tar:`), decoded at a size of dpl's choosing
    (a union: whether any of its sources does)."""
    return any(m.partition(":")[0] in FILE_SOURCES for m in union_members(spec))


def _check_split(source: str, split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise DplError(f"{source} has no split {split!r}; valid: {', '.join(valid)}")


def digits(split: str):
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


def fashion_mnist(split: str, download: bool):
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
    return from_torchvision("fashion-mnist", split, download)


def from_torchvision(source: str, split: str, download: bool):
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
