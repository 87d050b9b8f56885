"""Data: what a command reads, as tensors.

A source is held in memory as a uint8 tensor (N, C, H, W) with int64 labels, so batching is indexing and
needs no per-sample Python work. Image files (`imagefolder:`, `tar:`) too, when their decoded pixels fit
in IN_MEMORY_BYTES; larger ones stay on disk as an `images.ImageStore` that DataLoader workers decode.

    sources     the sources and `NAME[:SPLIT]` specs, unions, reading the built-in sources
    partition   Partition (labeled/unlabeled), Holdout (--val), parts and rows of a Dataset
    dataset     Dataset and its fingerprint
    images      image files: decoding, ImageStore, batches; listing.py: listing folders and tar shards, `pack`
    augment     the noise          bags    MIL bags          scenes, coco, boxes    data with boxes

`load` (here) is the front door; the public names of sources, partition and dataset are re-exported here, so
callers write `data.load(...)`, `data.Partition(...)`.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .. import DplError
from . import images as image_files
from . import sources
from .images import ImageStore
from .dataset import MAX_LISTED, Dataset
from .partition import PARTS, Holdout, Partition, hold_out, labeled_indices, rows, take_part
from .sources import (BOX_SOURCES, FASHION_CLASSES, FILE_SOURCES, HFLIP_OK, NORMALIZATION, SOURCES, SPLITS, data_root,
                      is_image_files, parse_spec, union_members)

IN_MEMORY_BYTES = 1 << 30     # decoded image files up to this size are held in memory, larger ones streamed


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


# A built-in source is read once per process (its tensors are shared by the parts and holdouts taken of it).
@functools.lru_cache(maxsize=8)
def _load_source(source: str, split: str, download: bool):
    if source == "digits":
        return sources.digits(split)
    if source == "fashion-mnist":
        return sources.fashion_mnist(split, download)
    return sources.from_torchvision(source, split, download)


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
