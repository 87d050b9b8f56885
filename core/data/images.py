"""Image files as a data source: photo folders and WebDataset tar shards, listed once (listing.py), decoded on
demand.

Every image goes through one decode (`decode`), whether the source is then held in memory or streamed:

    EXIF orientation applied; 16-bit grey scaled to 8 bits; alpha composited over black; palette, CMYK and
    the rest converted to the source's mode (grey when the sampled images are all grey, else RGB; grey by
    PIL's luma weights and rounding); the shorter side resized to S (bilinear, antialiased; JPEGs are first
    reduced in the DCT domain to no less than S) and the centre S x S cropped: the aspect ratio is kept, as in
    torchvision's evaluation transforms.

Who decodes what, judged from the file's headers (`_codec_kind`). TorchCodec (its own libjpeg-turbo, libpng
and libwebp; no FFmpeg) decodes 8-bit grey, grey+alpha, RGB and RGBA PNGs, still WebPs, and 8-bit grey or
colour JPEGs whose shorter side is under 2 x S; it applies their EXIF orientation, and the compositing and grey
conversion are done here with PIL's integer rounding, so the pixels are PIL's exactly. PIL decodes the rest:
JPEGs of shorter side 2 x S or more (`draft` decodes them at 1/2 to 1/8 scale, faster than torchcodec's full
decode: 5.4 against 7.9 ms for 1440 x 1080 to 64 px), CMYK and 12-bit JPEGs, an orientation torchcodec does not
read as PIL does (XMP's; an EXIF segment after another APP1; a PNG's eXIf or EXIF/XMP text chunks; a WebP's),
palette, tRNS, 1- to 4-bit and 16-bit PNGs, animated PNGs and WebPs, GIF, BMP, TIFF and PPM/PGM, and any file
torchcodec fails on (PIL then says whether it is readable). Without torchcodec, PIL decodes everything to the
same pixels. The resize is torch's whoever decoded (`_fit`): 2 to 9 times PIL's speed, within 1 of PIL's resize
(2 on rare pixels: 3 of 3,000 random images had one, on under 0.02 % of their pixels).

A file that cannot be decoded (truncated, zero bytes, not an image) is skipped and recorded, never fatal.
The listing's public names are re-exported here (`images.list_folder`, `images.pack`, ...).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import os

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
    pixels = _decode_codec(raw, size, channels)
    if pixels is None:
        pixels = _decode_pil(raw, size, channels)
    return _fit(pixels, size)


def conform(pixels: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Pixels decoded elsewhere (a video's frame), uint8 (C, H, W) grey, grey+alpha, RGB or RGBA -> uint8
    (channels, size, size) by the policy's conversion, resize and crop."""
    return _fit(_in_mode(pixels, channels), size)


def _fit(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (C, H, W) -> (C, size, size): the shorter side resized to `size` (torch's antialiased bilinear, the
    same pixels on every CPU capability), then the centre cropped."""
    _, h, w = pixels.shape
    if (w, h) == (size, size):
        return np.ascontiguousarray(pixels)
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        pixels = torch.nn.functional.interpolate(torch.from_numpy(pixels)[None], size=(nh, nw), mode="bilinear",
                                                 antialias=True, align_corners=False)[0].numpy()
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(pixels[:, top: top + size, left: left + size])


@functools.cache
def _codecs() -> dict | None:
    """torchcodec's image decoders by format, or None where torchcodec cannot load (then PIL decodes every image)."""
    try:
        from torchcodec.decoders import decode_jpeg, decode_png, decode_webp
    except Exception:        # not installed, or built for another torch: its libraries fail to load in many ways
        return None
    return {"jpeg": decode_jpeg, "png": decode_png, "webp": decode_webp}


def _decode_codec(raw: bytes, size: int, channels: int) -> np.ndarray | None:
    """uint8 (channels, H, W) through torchcodec, oriented and in the source's mode; None where PIL is to decode."""
    codecs = _codecs()
    kind = _codec_kind(raw, size) if codecs is not None else None
    if kind is None:
        return None
    try:              # torchcodec applies the EXIF orientation itself
        pixels = codecs[kind](torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode="UNCHANGED")
    except (RuntimeError, ValueError):      # a damaged file: PIL says whether it can be read
        return None
    return _in_mode(pixels.numpy(), channels)


def _in_mode(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Grey, grey+alpha, RGB or RGBA -> `channels`, rounded as PIL's convert_mode rounds: alpha over black as
    alpha_composite does (7 bits of fixed point), grey as L = R * 299/1000 + G * 587/1000 + B * 114/1000.
    In numpy: torch's dispatch costs more than the arithmetic at these sizes."""
    if len(pixels) in (2, 4):
        t = pixels[:-1].astype(np.uint32) * pixels[-1:] * 128 + (0x80 << 7)
        pixels = ((((t >> 8) + t) >> 8) >> 7).astype(np.uint8)
    if len(pixels) == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels, 3, axis=0)
    x = pixels.astype(np.uint32)
    return ((x[0] * 19595 + x[1] * 38470 + x[2] * 7471 + 0x8000) >> 16).astype(np.uint8)[None]


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_EXIF_TEXT = {b"Raw profile type exif", b"XML:com.adobe.xmp"}     # text chunks PIL reads an orientation from
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"


def _codec_kind(raw: bytes, size: int) -> str | None:
    """The torchcodec decoder that reads `raw` to PIL's pixels, orientation included, judged from the headers;
    None where PIL decodes (see the module docstring)."""
    if raw[:8] == PNG_MAGIC:
        return "png" if _codec_png(raw) else None
    if raw[:3] == b"\xff\xd8\xff":
        return "jpeg" if _codec_jpeg(raw, size) else None
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        still = raw[12:16] in (b"VP8 ", b"VP8L") or (raw[12:16] == b"VP8X" and len(raw) > 20
                                                      and not raw[20] & 0x0E)     # animation, XMP, EXIF flags
        return "webp" if still else None
    return None


def _codec_png(raw: bytes) -> bool:
    """An 8-bit grey, grey+alpha, RGB or RGBA PNG without colour-key transparency (tRNS), animation or an
    orientation (eXIf, or EXIF or XMP in text chunks, which PIL reads and libpng does not)."""
    if len(raw) < 33 or raw[12:16] != b"IHDR" or raw[24] != 8 or raw[25] not in (0, 2, 4, 6):
        return False
    at = 8
    while at + 8 <= len(raw):             # every chunk's header: PIL reads those after the pixels too
        kind = raw[at + 4: at + 8]
        if kind in (b"tRNS", b"eXIf", b"acTL"):
            return False
        if kind in (b"tEXt", b"zTXt", b"iTXt") and raw[at + 8: at + 88].split(b"\0", 1)[0] in PNG_EXIF_TEXT:
            return False
        if kind == b"IEND":
            break
        at += 12 + int.from_bytes(raw[at: at + 4], "big")
    return True


def _codec_jpeg(raw: bytes, size: int) -> bool:
    """An 8-bit grey or colour JPEG that PIL would not reduce in the DCT domain (its shorter side under 2 x size)
    and whose orientation torchcodec reads as PIL does. torchcodec reads the Orientation of the first APP1
    segment; PIL reads the first EXIF segment's, else a tiff:Orientation in XMP."""
    at, frame, app1 = 2, False, []
    while at + 4 <= len(raw) and raw[at] == 0xFF:
        marker = raw[at + 1]
        if marker == 0xFF:                # a fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            at += 2
            continue
        if marker == 0xDA:                # the start of the scan: the headers are read
            break
        length = int.from_bytes(raw[at + 2: at + 4], "big")
        body = raw[at + 4: at + 2 + length]
        if marker == 0xE1:
            app1.append(body)
        elif marker in JPEG_SOF:
            if len(body) < 6 or body[0] != 8 or body[5] not in (1, 3):       # 12-bit, CMYK
                return False
            height, width = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
            if min(width, height) >= 2 * size:
                return False
            frame = True
        at += 2 + length
    if not frame:
        return False
    exif = [b[6:] for b in app1 if b.startswith(b"Exif\0\0")]
    if app1 and not app1[0].startswith(b"Exif\0\0") and (exif or not app1[0].startswith(XMP_APP1)):
        return False                      # torchcodec would read another segment than PIL (XMP reads as none)
    orientation = _exif_orientation(exif[0]) if exif else None
    if orientation is None:
        return not any(b.startswith(XMP_APP1) and b"tiff:Orientation" in b for b in app1)
    return orientation >= 0


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation tag of a TIFF header's first directory, None when absent, -1 when it is not one SHORT in a
    directory this reader follows to its end (PIL's reading of it is then PIL's)."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8 or int.from_bytes(tiff[2:4], order) != 42:
        return -1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return -1
    end = ifd + 2 + 12 * int.from_bytes(tiff[ifd: ifd + 2], order)
    if end > len(tiff):
        return -1
    for entry in range(ifd + 2, end, 12):
        if int.from_bytes(tiff[entry: entry + 2], order) == 0x0112:
            one_short = tiff[entry + 2: entry + 8] == (3).to_bytes(2, order) + (1).to_bytes(4, order)
            return int.from_bytes(tiff[entry + 8: entry + 10], order) if one_short else -1
    return None


def _decode_pil(raw: bytes, size: int, channels: int) -> np.ndarray:
    """uint8 (channels, H, W) through PIL: JPEGs reduced in the DCT domain to no less than `size`, oriented, in
    the source's mode."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(raw)) as im:
        im.draft(None, (size, size))      # JPEG: decode at 1/2, 1/4 or 1/8 scale while both sides stay >= size
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        pixels = np.array(convert_mode(im, channels), dtype=np.uint8)
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
