"""Label folders and the shards they are made of (box label folders share the shards' checks).

A label folder holds shard-RRRRR-NNNNN.safetensors files (rank, sequence). Every shard carries the folder's common
metadata plus its own rank/seq and how many shards its rank wrote, so a reader can tell a complete folder from an
interrupted or mixed one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import DplError
from .files import Header, load_tensors, read_header, require, sha256_file

LABEL_KEYS = ("teachers", "data", "tau", "mode", "num_classes", "classes", "total", "world")
SHARD_TENSORS = {"hard": ("index", "label", "confidence"),
                 "soft": ("index", "label", "confidence", "probs"),
                 "topk": ("index", "label", "confidence", "topk_index", "topk_prob")}
SHARD_NDIM = {"index": 1, "label": 1, "confidence": 1, "probs": 2, "topk_index": 2, "topk_prob": 2}
SHARD_DTYPES = {"index": torch.int64, "label": torch.int64, "confidence": torch.float32,
                "probs": torch.float16, "topk_index": torch.int32, "topk_prob": torch.float16}


# View labels (`dpl label --views K`) add, per sample, K stored augmentations and the teacher's output on each:
# the crop offsets and flips, and the probabilities (soft) or top k (topk) of every view, beside the un-augmented
# image's in the tensors above. Their metadata `views` says how they were drawn; VIEW_FORMAT is its version.
VIEW_FORMAT = 1
VIEW_KEYS = ("format", "count", "crop_pad", "hflip", "size", "seed")
VIEW_TENSORS = {"soft": ("view_offset", "view_flip", "view_probs"),
                "topk": ("view_offset", "view_flip", "view_topk_index", "view_topk_prob")}
VIEW_DTYPES = {"view_offset": torch.int16, "view_flip": torch.uint8, "view_probs": torch.float16,
               "view_topk_index": torch.int32, "view_topk_prob": torch.float16}


@dataclass
class LabelViews:
    """A view label folder's stored views, rows as the folder's: crop offsets (n, K, 2) (row, column in the image
    padded by `crop_pad`), flips (n, K), and the teacher's output on each view (probs (n, K, C), or topk_index and
    topk_prob (n, K, k))."""

    meta: dict
    offset: torch.Tensor
    flip: torch.Tensor
    probs: torch.Tensor | None = None
    topk_index: torch.Tensor | None = None
    topk_prob: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return self.meta["count"]

    def to(self, device) -> "LabelViews":
        return LabelViews(self.meta, **{k: None if getattr(self, k) is None else getattr(self, k).to(device)
                                        for k in ("offset", "flip", "probs", "topk_index", "topk_prob")})

    def bytes_per_view(self) -> float:
        """Storage of the views' tensors per sample per view."""
        ts = [t for t in (self.offset, self.flip, self.probs, self.topk_index, self.topk_prob) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts) / max(1, self.offset.shape[0] * self.count)


# Shards of image files also carry each sample's key (its path or shard key, UTF-8, concatenated, with
# offsets) and the positions of the files that could not be decoded.
KEY_TENSORS = {"key_bytes": torch.uint8, "key_offsets": torch.int64, "skipped": torch.int64}


def encode_keys(keys: list[str]) -> dict[str, torch.Tensor]:
    encoded = [os.fsencode(k) for k in keys]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(k) for k in encoded])
    return {"key_bytes": torch.from_numpy(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()),
            "key_offsets": torch.from_numpy(offsets)}


def decode_keys(tensors: dict[str, torch.Tensor], path: Path) -> np.ndarray:
    raw, offsets = tensors["key_bytes"].numpy().tobytes(), tensors["key_offsets"].numpy()
    if (len(offsets) != len(tensors["index"]) + 1 or offsets[0] != 0 or offsets[-1] != len(raw)
            or (np.diff(offsets) < 0).any()):
        raise DplError(f"{path}: its sample keys do not match its rows")
    return np.array([raw[a:b] for a, b in zip(offsets[:-1], offsets[1:])], dtype=bytes)


def shard_name(rank: int, seq: int) -> str:
    return f"shard-{rank:05d}-{seq:05d}.safetensors"


@dataclass
class Labels:
    """A whole label folder, read and checked; rows sorted by index."""

    path: Path
    meta: dict
    index: torch.Tensor
    label: torch.Tensor
    confidence: torch.Tensor
    probs: torch.Tensor | None = None          # (n, C) float16, mode soft
    topk_index: torch.Tensor | None = None     # (n, k) int32, mode topk
    topk_prob: torch.Tensor | None = None      # (n, k) float16, mode topk
    keys: np.ndarray | None = None             # image files: each row's sample key (bytes)
    skipped: int = 0                           # image files the teacher could not read
    views: LabelViews | None = None            # dpl label --views: stored augmentations and their outputs

    @property
    def mode(self) -> str:
        return self.meta["mode"]

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    def __len__(self) -> int:
        return len(self.index)

    def sha256(self) -> str:
        return folder_sha256(self.path)

    def to(self, device) -> "Labels":
        moved = {k: getattr(self, k) for k in ("index", "label", "confidence", "probs", "topk_index", "topk_prob")}
        return Labels(self.path, self.meta, **{k: None if v is None else v.to(device) for k, v in moved.items()},
                      keys=self.keys, skipped=self.skipped, views=None if self.views is None else self.views.to(device))


def folder_kind(folder: Path) -> str | None:
    """The `dpl.kind` of a folder's first shard ("labels", "boxes", "keypoints"); None without a readable one (its
    reader will say why)."""
    first = min(Path(folder).glob("shard-*.safetensors"), default=None)
    try:
        return None if first is None else read_header(first).meta.get("dpl.kind")
    except DplError:
        return None


def folder_data(folder: Path) -> dict:
    """The data record (`data`) of a folder's first shard; {} without a readable one (its reader will say why)."""
    first = min(Path(folder).glob("shard-*.safetensors"), default=None)
    try:
        found = {} if first is None else read_header(first).meta.get("data")
    except DplError:
        return {}
    return found if isinstance(found, dict) else {}


def folder_sha256(folder: Path) -> str:
    """The identity of a label folder: sha256 over its shards' names and sha256s."""
    h = hashlib.sha256()
    for shard in sorted(Path(folder).glob("shard-*.safetensors")):
        h.update(f"{shard.name} {sha256_file(shard)}\n".encode())
    return h.hexdigest()


def shard_meta(meta: dict, rank: int, seq: int, rank_shards: int, count: int) -> dict:
    """A shard's metadata: the folder's common keys plus where the shard sits in its rank's series."""
    return {**meta, "rank": rank, "seq": seq, "rank_shards": rank_shards, "count": count}


def same_shard(path: Path, kind: str, expected: dict) -> bool:
    """Whether `path` is a readable `kind` shard whose metadata is `expected` (a shard_meta, its count aside):
    what `dpl label --resume` keeps."""
    if not path.exists():
        return False
    try:
        found = read_header(path, kind=kind).meta
    except DplError:
        return False
    plain = lambda v: json.loads(json.dumps(v, default=str))       # noqa: E731  (tuples were stored as lists)
    return all(found.get(k) == plain(v) for k, v in expected.items() if k != "count")


def read_labels(folder: Path, allow_partial: bool = False) -> Labels:
    """Read and check a whole label folder. `allow_partial` accepts a folder that misses shards (an
    interrupted or still running `dpl label`): its rows are then the samples its shards hold."""
    folder = Path(folder)
    headers = shard_headers(folder)
    first = headers[0]
    common = {k: first.meta[k] for k in LABEL_KEYS}
    check_complete(folder, headers, common["world"], allow_partial)
    mode, c = common["mode"], common["num_classes"]
    if mode not in SHARD_TENSORS:
        raise DplError(f"{folder}: unknown label mode {mode!r}")
    views = _views_meta(folder, headers, mode)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in SHARD_TENSORS[mode] + (
        VIEW_TENSORS[mode] if views else ())}
    keys: list[np.ndarray] = []
    skipped: list[torch.Tensor] = []
    for h in headers:
        _check_shard_shapes(folder, h, first, mode, c)
        if views:
            _check_view_shapes(h, mode, views["count"], c)
        tensors = _load_shard(folder, h, parts, headers[0])
        if "key_bytes" in tensors:
            keys.append(decode_keys(tensors, h.path))
        skipped.append(tensors.get("skipped", torch.zeros(0, dtype=torch.int64)))
    cat = {name: torch.cat(ts) for name, ts in parts.items()}
    order = torch.argsort(cat["index"])
    cat = {name: t[order] for name, t in cat.items()}
    gaps = torch.cat(skipped)
    _check_rows(folder, cat, gaps, common["total"], c, mode, allow_partial)
    sample_keys = np.concatenate(keys)[order.numpy()] if keys else None
    if sample_keys is not None and len(np.unique(sample_keys)) != len(sample_keys):
        raise DplError(f"{folder}: a sample key appears twice")
    stored = None
    if views:
        stored = LabelViews(views, **{name[len("view_"):]: cat.pop(name) for name in VIEW_TENSORS[mode]})
        _check_views(folder, stored, c)
    return Labels(folder, first.meta, **cat, keys=sample_keys, skipped=len(gaps), views=stored)


def _views_meta(folder: Path, headers: list[Header], mode: str) -> dict | None:
    """The folder's `views` record (None for labels of un-augmented images only), the same in every shard and of
    the format this reader knows."""
    views = headers[0].meta.get("views")
    for h in headers:
        if h.meta.get("views") != views:
            raise DplError(f"{folder}: mixed label folder: {h.path.name} differs from {headers[0].path.name} in 'views'")
    if views is None:
        return None
    if not isinstance(views, dict) or views.get("format") != VIEW_FORMAT:
        found = views.get("format") if isinstance(views, dict) else views
        raise DplError(f"{folder}: view labels of format {found!r}, and this dpl reads format {VIEW_FORMAT}: "
                       "label the data again with this dpl (dpl label --views K)")
    missing = [k for k in VIEW_KEYS if k not in views]
    if missing or not (isinstance(views["count"], int) and views["count"] >= 1):
        raise DplError(f"{folder}: its views record lacks {', '.join(missing) or 'a view count of at least 1'}")
    if mode not in VIEW_TENSORS:
        raise DplError(f"{folder}: {mode} labels cannot hold views")
    return views


def _check_view_shapes(h: Header, mode: str, k: int, c: int) -> None:
    """A view shard's tensors, as declared: (count, K, ...) with the columns of its mode."""
    n = h.meta["count"]
    for name in VIEW_TENSORS[mode]:
        info = h.tensors.get(name)
        if info is None:
            raise DplError(f"{h.path}: view label shard lacks tensor {name!r}")
        shape = info["shape"]
        tail = {"view_offset": [2], "view_flip": [], "view_probs": [c]}.get(name)
        if shape[:2] != [n, k] or (tail is not None and shape[2:] != tail) or (tail is None and len(shape) != 3):
            raise DplError(f"{h.path}: tensor {name!r} has shape {shape}, expected ({n}, {k}, ...) for {k} views of "
                           f"{n} samples")


def _check_views(folder: Path, views: LabelViews, c: int) -> None:
    """Stored offsets inside the padded image and top-k classes inside 0..C-1."""
    pad = views.meta["crop_pad"]
    if len(views.offset) and (views.offset.min() < 0 or views.offset.max() > 2 * pad):
        raise DplError(f"{folder}: view crop offsets outside 0..{2 * pad}")
    if views.topk_index is not None and ((views.topk_index < 0) | (views.topk_index >= c)).any():
        raise DplError(f"{folder}: view top-k class indices outside 0..{c - 1}")


def shard_headers(folder: Path, kind: str = "labels", keys: tuple[str, ...] = LABEL_KEYS) -> list[Header]:
    """The headers of a folder's shards (label or box shards), which must agree on the folder's common
    metadata `keys`."""
    if not folder.exists():
        raise DplError(f"{folder}: no such label folder")
    if not folder.is_dir():
        raise DplError(f"{folder}: not a folder (label shards live in a folder written by dpl label)")
    files = sorted(folder.glob("shard-*.safetensors"))
    if not files:
        raise DplError(f"{folder}: no label shards (shard-*.safetensors) in it")
    headers = [read_header(f, kind=kind) for f in files]
    first = headers[0]
    for h in headers:
        require(h, *keys, "rank", "seq", "rank_shards", "count")
        for k in keys:
            if h.meta[k] != first.meta[k]:
                raise DplError(f"{folder}: mixed label folder: {h.path.name} differs from {first.path.name} in {k!r}")
    return headers


def check_complete(folder: Path, headers: list[Header], world: int, allow_partial: bool) -> None:
    """Every shard is where its metadata says; without allow_partial, every rank's series is complete."""
    present = {(h.meta["rank"], h.meta["seq"]) for h in headers}
    for h in headers:
        if h.path.name != shard_name(h.meta["rank"], h.meta["seq"]):
            raise DplError(f"{h.path}: its metadata says rank {h.meta['rank']} shard {h.meta['seq']}")
        if h.meta["rank"] >= world:
            raise DplError(f"{h.path}: rank {h.meta['rank']}, but the folder was written by {world} ranks")
    # Fewer files than ranks leave some rank among the first len(files) + 1 without shards: the loops stay
    # bounded by the files on disk, whatever the metadata announces.
    for rank in range(0 if allow_partial else min(world, len(headers) + 1)):
        announced = {h.meta["rank_shards"] for h in headers if h.meta["rank"] == rank} or {None}
        if len(announced) != 1 or None in announced:
            raise DplError(f"{folder}: incomplete label folder: no shards from rank {rank} of {world}")
        first_missing = next(s for s in itertools.count() if (rank, s) not in present)
        if first_missing < announced.pop():
            raise DplError(f"{folder}: incomplete label folder: {shard_name(rank, first_missing)} is missing")


def _check_shard_shapes(folder: Path, h: Header, first: Header, mode: str, c: int) -> None:
    """A shard's tensors, as its header declares them, have the rows and columns its metadata implies."""
    for name in SHARD_TENSORS[mode]:
        info = h.tensors.get(name)
        if info is None:
            raise DplError(f"{h.path}: {mode} label shard lacks tensor {name!r}")
        if info["shape"][:1] != [h.meta["count"]]:
            raise DplError(f"{h.path}: tensor {name!r} has {info['shape'][:1]} rows, metadata says {h.meta['count']}")
        if len(info["shape"]) != SHARD_NDIM[name]:
            raise DplError(f"{h.path}: tensor {name!r} has shape {info['shape']}, "
                           f"expected {SHARD_NDIM[name]} dimensions")
    if mode == "soft" and h.tensors["probs"]["shape"][1] != c:
        raise DplError(f"{folder}: probs have {h.tensors['probs']['shape'][1]} columns, expected {c}")
    if mode == "topk":
        k, k_prob, k_first = (x.tensors[n]["shape"][1] for x, n in
                              ((h, "topk_index"), (h, "topk_prob"), (first, "topk_index")))
        if not k == k_prob == k_first or not 1 <= k <= c:
            raise DplError(f"{h.path}: top-k tensors have {k} and {k_prob} columns, expected the same k "
                           f"(1..{c}) in every shard")


def _load_shard(folder: Path, h: Header, parts: dict[str, list[torch.Tensor]], first: Header) -> dict[str, torch.Tensor]:
    """A shard's tensors, their dtypes checked; its label tensors are appended to `parts`."""
    tensors = load_tensors(h)
    for name in parts:
        t = tensors[name]
        expected = SHARD_DTYPES.get(name) or VIEW_DTYPES[name]
        if t.dtype != expected:
            raise DplError(f"{h.path}: tensor {name!r} is {t.dtype}, expected {expected}")
        parts[name].append(t)
    for name, dtype in KEY_TENSORS.items():
        if name in tensors and (tensors[name].dtype != dtype or tensors[name].ndim != 1):
            raise DplError(f"{h.path}: tensor {name!r} is not a vector of {dtype}")
    if ("key_bytes" in tensors) != ("key_bytes" in first.tensors):
        raise DplError(f"{folder}: mixed label folder: some shards carry sample keys, others do not")
    return tensors


def _check_rows(folder: Path, cat: dict[str, torch.Tensor], gaps: torch.Tensor, total: int, c: int, mode: str,
                allow_partial: bool) -> None:
    """The rows (and the skipped samples) cover 0..total-1 once each (a part of it, once, when partial);
    class indices are within 0..c-1."""
    covered = torch.cat([cat["index"], gaps]).sort().values
    if allow_partial:
        if len(covered) and ((covered[1:] == covered[:-1]).any() or covered[0] < 0 or covered[-1] >= total):
            raise DplError(f"{folder}: the shards hold samples outside 0..{total - 1} or twice")
    elif len(covered) != total or not torch.equal(covered, torch.arange(total)):
        raise DplError(f"{folder}: the shards do not cover samples 0..{total - 1} exactly once")
    if ((cat["label"] < 0) | (cat["label"] >= c)).any():
        raise DplError(f"{folder}: labels outside 0..{c - 1}")
    if mode == "topk" and ((cat["topk_index"] < 0) | (cat["topk_index"] >= c)).any():
        raise DplError(f"{folder}: top-k class indices outside 0..{c - 1}")
