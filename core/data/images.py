"""Image files as a data source: photo folders and WebDataset tar shards, listed once (listing.py), decoded on
demand.

Every image goes through one decode (`decode`), whether the source is then held in memory or streamed:

    EXIF orientation applied; 16-bit grey scaled to 8 bits; alpha composited over black; palette, CMYK and
    the rest converted to the source's mode (grey when the sampled images are all grey, else RGB); the
    shorter side resized to S (bilinear, antialiased; JPEGs are first reduced in the DCT domain to no less
    than S) and the centre S x S cropped: the aspect ratio is kept, as in torchvision's evaluation transforms.

A file that cannot be decoded (truncated, zero bytes, not an image) is skipped and recorded, never fatal.
The listing's public names are re-exported here (`images.list_folder`, `images.pack`, ...).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import os
import warnings

import numpy as np
import torch

from .. import DplError
from .listing import (IMAGE_SUFFIXES, Listing, list_folder, list_shards, pack, shard_key, shard_keys,  # noqa: F401
                      split_folder)

GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
MAX_SIZE = 2048            # --resize / decode side: larger is refused before anything is allocated
DEFAULT_MAX_SIZE = 224     # the default side never exceeds torchvision's training size
PROBE = 64                 # images whose headers choose the default side and the mode
NORM_SAMPLE = 1024         # decoded images that estimate a source's mean and std


# ---- decoding ----------------------------------------------------------------------------------------

def decode(raw: bytes, size: int, channels: int) -> np.ndarray:
    """Encoded image -> uint8 (channels, size, size) by the module's one policy; raises on a bad file."""
    if _plain_png(raw, size) and _png_decoder() is not None:
        try:
            return _decode_plain_png(raw, channels)
        except RuntimeError:          # a damaged file: PIL tells
            pass
    return _decode_pil(raw, size, channels)


@functools.cache
def _png_decoder():
    """torchvision.io's decode_png, or None where it is gone: torchvision 0.29 deprecates its image decoders
    for TorchCodec, and PIL then decodes every image (the same pixels, 2x the time for small PNGs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_png
    except ImportError:
        return None
    return lambda data: decode_png(data, ImageReadMode.UNCHANGED)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _plain_png(raw: bytes, size: int) -> bool:
    """An 8-bit grey or RGB PNG of exactly size x size, without transparency or EXIF: nothing to do but decode,
    which libpng (torchvision.io) does without PIL's per-image Python work (46 -> 21 us for 28 x 28)."""
    if raw[:8] != PNG_MAGIC or raw[12:16] != b"IHDR" or len(raw) < 33:
        return False
    width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    if (width, height) != (size, size) or raw[24] != 8 or raw[25] not in (0, 2):
        return False
    at = 33
    while at + 8 <= len(raw):             # the chunks before the pixel data
        kind = raw[at + 4: at + 8]
        if kind == b"IDAT":
            return True
        if kind in (b"tRNS", b"eXIf"):
            return False
        at += 12 + int.from_bytes(raw[at: at + 4], "big")
    return False


def _decode_plain_png(raw: bytes, channels: int) -> np.ndarray:
    pixels = _png_decoder()(torch.frombuffer(bytearray(raw), dtype=torch.uint8)).numpy()
    if len(pixels) == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels, 3, axis=0)
    r, g, b = pixels.astype(np.uint32)    # PIL's L = R * 299/1000 + G * 587/1000 + B * 114/1000, as it rounds
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[None]


def _decode_pil(raw: bytes, size: int, channels: int) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(raw)) as im:
        im.draft(None, (size, size))      # JPEG: decode at 1/2, 1/4 or 1/8 scale while both sides stay >= size
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        im = convert_mode(im, channels)
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
        if (nw, nh) != (size, size):
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        pixels = np.array(im, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def convert_mode(im, channels: int):
    """A PIL image -> mode L (channels 1) or RGB: 16-bit and float grey scaled to 8 bits, transparency over black."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":      # 16-bit grey: scale, do not clip
        values = np.asarray(im, dtype=np.float64) / 257.0
        im = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.rint(np.asarray(im) * 255.0), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    mode = "L" if channels == 1 else "RGB"
    return im if im.mode == mode else im.convert(mode)


def probe(listing: Listing, rows: np.ndarray) -> tuple[int | None, int]:
    """(median shorter side, channels) from the headers of up to PROBE images spread evenly over `rows`."""
    from PIL import Image

    sides, colour = [], False
    for row in _spread(rows, PROBE):
        try:
            with Image.open(io.BytesIO(listing.read_bytes(int(row)))) as im:
                sides.append(min(im.size))
                colour = colour or im.mode not in GREY_MODES
        except Exception:
            continue
    return (int(np.median(sides)) if sides else None), (3 if colour else 1)


def _spread(rows: np.ndarray, k: int) -> np.ndarray:
    if len(rows) <= k:
        return rows
    return rows[np.linspace(0, len(rows) - 1, k).round().astype(np.int64)]


class ImageStore:
    """A source's images, uint8 (N, C, S, S), decoded when indexed: `store[idx]` decodes those rows
    (raising on an unreadable one), `store.subset(idx)` is another lazy store."""

    def __init__(self, listing: Listing, rows: np.ndarray, size: int, channels: int):
        self.listing, self.rows, self.side, self.channels = listing, rows, size, channels

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.rows), self.channels, self.side, self.side)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.channels * self.side * self.side

    @property
    def keys(self) -> np.ndarray:
        return self.listing.keys[self.rows]

    def subset(self, idx) -> ImageStore:
        return ImageStore(self.listing, self.rows[_as_numpy(idx)], self.side, self.channels)

    def read(self, i: int) -> np.ndarray | None:
        """Row i decoded, or None when the file cannot be."""
        try:
            return decode(self.listing.read_bytes(int(self.rows[i])), self.side, self.channels)
        except Exception:               # PIL raises many kinds on a bad file: each just means unreadable
            return None

    def __getitem__(self, idx) -> torch.Tensor:
        picked = np.arange(len(self.rows))[_as_numpy(idx)]
        out = np.empty((len(picked), self.channels, self.side, self.side), dtype=np.uint8)
        for j, i in enumerate(picked):
            pixels = self.read(int(i))
            if pixels is None:
                raise DplError(f"{self.listing.path_of(int(self.rows[i]))}: {self.keys_of([i])[0]} is no longer "
                               "readable (it was when the source was checked)")
            out[j] = pixels
        return torch.from_numpy(out)

    def keys_of(self, positions) -> list[str]:
        return [os.fsdecode(k) for k in self.listing.keys[self.rows[np.asarray(positions, dtype=np.int64)]]]


def rows_of(images, selection):
    """The selected rows: a tensor's, or a lazy store of a store's."""
    return images[selection] if torch.is_tensor(images) else images.subset(selection)


def _as_numpy(idx):
    if torch.is_tensor(idx):
        return idx.cpu().numpy()
    return idx


# ---- reading a whole store in order, in DataLoader workers -----------------------------------------------

class _Chunks(torch.utils.data.Dataset):
    def __init__(self, store: ImageStore, batch_size: int):
        self.store, self.batch_size = store, batch_size

    def __len__(self) -> int:
        return -(-len(self.store) // self.batch_size)

    def __getitem__(self, i: int):
        start = i * self.batch_size
        stop = min(start + self.batch_size, len(self.store))
        out = torch.zeros((stop - start, *self.store.shape[1:]), dtype=torch.uint8)
        ok = torch.ones(stop - start, dtype=torch.bool)
        for j in range(start, stop):
            pixels = self.store.read(j)
            if pixels is None:
                ok[j - start] = False
            else:
                out[j - start] = torch.from_numpy(pixels)
        return start, out, ok


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def frozen_heap():
    """Fork DataLoader workers with the parent's Python objects out of the collector's reach: a collection in
    a worker writes to the header of every object it tracks, and so copies the parent's pages into it."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def default_workers(model_on_cpu: bool) -> int:
    """Decoding workers when none are asked for. With the model elsewhere (a GPU) or none running: the cores
    less one, at most 8. Where the model's threads need the same cores: none on 2 cores or fewer (decoding
    inline measured faster than one worker there: 6,300 vs 5,700 images/s labeling tar shards, 8,100 from
    memory), else a quarter of them."""
    cores = usable_cores()
    if not model_on_cpu:
        return min(8, max(1, cores - 1))
    return 0 if cores <= 2 else min(8, cores // 4)


def batches(images, batch_size: int, workers: int | None = None, pin: bool = False, model_on_cpu: bool = True):
    """(start, uint8 batch, readable mask) over `images` in order. A tensor is sliced; a store is decoded
    `batch_size` images at a time by DataLoader workers, an unreadable image coming back as zeros."""
    if torch.is_tensor(images):
        for start in range(0, len(images), batch_size):
            x = images[start: start + batch_size]
            yield start, x, torch.ones(len(x), dtype=torch.bool)
        return
    workers = default_workers(model_on_cpu) if workers is None else workers
    chunks = _Chunks(images, batch_size)
    if workers == 0 or len(chunks) <= 1:
        yield from (chunks[i] for i in range(len(chunks)))
        return
    loader = torch.utils.data.DataLoader(chunks, batch_size=None, num_workers=min(workers, len(chunks)),
                                         pin_memory=pin, prefetch_factor=4, generator=torch.Generator())
    with frozen_heap():
        batches = iter(loader)
    yield from batches


def decode_all(store: ImageStore, workers: int | None = None, keep_pixels: bool = True
               ) -> tuple[torch.Tensor | None, np.ndarray]:
    """One decoding pass: (uint8 tensor of every image, zeros where unreadable, or None when the pixels are not
    kept; positions of the unreadable images)."""
    out = torch.empty(store.shape, dtype=torch.uint8) if keep_pixels else None
    bad = []
    for start, x, ok in batches(store, 256, workers, model_on_cpu=False):
        if out is not None:
            out[start: start + len(x)] = x
        bad.extend((start + torch.nonzero(~ok).flatten()).tolist())
    return out, np.array(bad, dtype=np.int64)


def normalization(images, max_samples: int = NORM_SAMPLE) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over up to `max_samples` images spread evenly: the same for a source
    whether it is held in memory or streamed."""
    n = len(images)
    picked = _spread(np.arange(n), max_samples)
    if torch.is_tensor(images):
        x = images[torch.from_numpy(picked)]
    else:
        decoded = [p for p in (images.read(int(i)) for i in picked) if p is not None]
        if not decoded:
            raise DplError(f"{images.listing.root}: none of the sampled images can be decoded")
        x = torch.from_numpy(np.stack(decoded))
    x = x.float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())
