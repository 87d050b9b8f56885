"""Image files as a data source: photo folders and WebDataset tar shards, listed once, decoded on demand.

Listing is cheap (names and byte sizes; for tar shards, the member headers), so a source of a million files
costs tens of MB of index, never its pixels. Every image goes through one decode (`decode`), whether the
source is then held in memory or streamed:

    EXIF orientation applied; 16-bit grey scaled to 8 bits; alpha composited over black; palette, CMYK and
    the rest converted to the source's mode (grey when the sampled images are all grey, else RGB); the
    shorter side resized to S (bilinear, antialiased; JPEGs are first reduced in the DCT domain to no less
    than S) and the centre S x S cropped: the aspect ratio is kept, as in torchvision's evaluation transforms.

A file that cannot be decoded (truncated, zero bytes, not an image) is skipped and recorded, never fatal.
"""

from __future__ import annotations

import array
import contextlib
import functools
import gc
import hashlib
import io
import os
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import DplError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SUFFIXES = {os.fsencode(s) for s in IMAGE_SUFFIXES}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
MAX_SIZE = 2048            # --resize / decode side: larger is refused before anything is allocated
DEFAULT_MAX_SIZE = 224     # the default side never exceeds torchvision's training size
PROBE = 64                 # images whose headers choose the default side and the mode
NORM_SAMPLE = 1024         # decoded images that estimate a source's mean and std


@dataclass(frozen=True)
class Listing:
    """What a source holds, as listed: one row per sample, columns as numpy arrays (cheap to fork)."""

    root: Path
    archives: tuple[str, ...]        # tar shards (paths relative to root); empty for a folder
    keys: np.ndarray                 # bytes: the file's path relative to root, or the shard key
    archive: np.ndarray              # int32: which archive holds the sample, -1 for a plain file
    offset: np.ndarray               # int64: where its bytes start in the archive
    size: np.ndarray                 # int64: its size in bytes
    labels: np.ndarray               # int64: class index, -1 where unknown
    classes: tuple[str, ...]
    ignored: tuple[str, ...] = ()    # what listing passed over, said aloud by the CLI

    def __len__(self) -> int:
        return len(self.keys)

    def fingerprint(self) -> str:
        """sha256 over the classes and every sample's key, byte size and label: cheap for a million files.
        It does not read pixels, so a file rewritten in place at the same size keeps the fingerprint."""
        h = hashlib.sha256("\n".join(self.classes).encode())
        for column in (self.keys, self.size, self.labels):
            h.update(np.ascontiguousarray(column).tobytes())
        return h.hexdigest()

    def path_of(self, row: int) -> Path:
        a = int(self.archive[row])
        return self.root / (self.archives[a] if a >= 0 else os.fsdecode(self.keys[row]))

    def read_bytes(self, row: int) -> bytes:
        a = int(self.archive[row])
        if a < 0:
            return (self.root / os.fsdecode(self.keys[row])).read_bytes()
        f = _open_archive(self.root / self.archives[a])
        f.seek(int(self.offset[row]))
        return f.read(int(self.size[row]))


_ARCHIVES: dict[tuple[int, Path], object] = {}


def _open_archive(path: Path):
    """One open handle per archive and process (DataLoader workers are forked: never share a handle)."""
    key = (os.getpid(), path)
    if key not in _ARCHIVES:
        _ARCHIVES[key] = open(path, "rb")
    return _ARCHIVES[key]


def _resolved_folder(path: Path) -> Path:
    try:
        path = path.resolve(strict=True)
    except (RuntimeError, OSError) as e:
        if "loop" in str(e).lower() or getattr(e, "errno", None) == 40:
            raise DplError(f"{path}: a symlink loop") from None
        raise DplError(f"{path}: no such folder") from None
    if not path.is_dir():
        raise DplError(f"{path}: a file, not a folder of images")
    return path


def split_folder(root: Path, split: str) -> Path:
    """`root/split` where it exists; a folder without split sub-folders is the train split."""
    root = _resolved_folder(root)
    if (root / split).is_dir():
        return root / split
    if any((root / s).is_dir() for s in ("train", "test", "val")) or split != "train":
        raise DplError(f"{root} has no {split!r} sub-folder" + (
            "" if split == "train" else " (a folder without train/ and test/ sub-folders is the train split)"))
    return root


def _image_files(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(image file names as bytes, their byte sizes, sub-folder names) directly in `folder`, each sorted by
    name. Names are listed as bytes and entries are not kept: a million files cost little more than their
    names, and leave few Python objects behind (which forked DataLoader workers would copy)."""
    names, sizes, dirs = [], array.array("q"), []
    try:
        with os.scandir(os.fsencode(folder)) as entries:
            for e in entries:
                try:
                    if e.is_dir():
                        dirs.append(os.fsdecode(e.name))
                    elif os.path.splitext(e.name)[1].lower() in SUFFIXES and e.is_file():
                        names.append(e.name)
                        sizes.append(e.stat().st_size)
                except OSError:        # a dangling link or a symlink loop: not an image
                    continue
    except OSError as e:
        raise DplError(f"{folder}: cannot list ({e.strerror})") from None
    keys = np.array(names, dtype=bytes) if names else np.zeros(0, dtype="S1")
    del names
    order = np.argsort(keys, kind="stable")
    return keys[order], np.frombuffer(sizes, dtype=np.int64)[order], sorted(dirs)


def list_folder(folder: Path) -> Listing:
    """Class sub-folders make a labeled source; a folder of image files alone is an unlabeled pool."""
    files, file_sizes, dirs = _image_files(folder)
    ignored = []
    if dirs:
        classes, keys, sizes, labels = [], [], [], []
        for d in dirs:
            members, member_sizes, _ = _image_files(folder / d)
            if not len(members):
                raise DplError(f"{folder}: class folder {d!r} has no image files (a class without samples); "
                               f"remove it or add images")
            keys.append(np.char.add(os.fsencode(d) + b"/", members))
            sizes.append(member_sizes)
            labels.append(np.full(len(members), len(classes), dtype=np.int64))
            classes.append(d)
        if len(classes) < 2:
            raise DplError(f"{folder}: a labeled image folder needs at least 2 class sub-folders, found 1 "
                           f"({classes[0]!r}); a folder of image files alone is an unlabeled pool")
        if len(files):
            ignored.append(f"{len(files)} image files directly in {folder} (not in a class folder)")
        keys, sizes, labels = np.concatenate(keys), np.concatenate(sizes), np.concatenate(labels)
    elif len(files):
        classes, keys, sizes = [], files, file_sizes
        labels = np.full(len(files), -1, dtype=np.int64)
    else:
        raise DplError(f"{folder}: no image files and no class sub-folders "
                       f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return Listing(folder, (), keys, np.full(len(keys), -1, dtype=np.int32), np.zeros(len(keys), dtype=np.int64),
                   sizes, labels, tuple(classes), tuple(ignored))


def list_shards(folder: Path) -> Listing:
    """WebDataset tar shards (`KEY.jpg`/`KEY.png`/... plus optional `KEY.cls`) in a folder, or one .tar file.

    The shards must be uncompressed tar: each member is then read at its offset, so samples are reached in
    any order, and ranks and workers split them by position exactly. `classes.txt` beside the shards (one
    name per line) names the classes; without it they are named by their index.
    """
    root, names = _shard_files(Path(folder))
    keys, archive, offset, size, labels = [], [], [], [], []   # numpy arrays, one per shard
    for a, name in enumerate(names):
        images, shard_labels = _read_shard(root / name)
        keys.append(np.array([k.encode() for k in images], dtype=bytes))
        archive.append(np.full(len(images), a, dtype=np.int32))
        offset.append(np.array([f[0] for f in images.values()], dtype=np.int64))
        size.append(np.array([f[1] for f in images.values()], dtype=np.int64))
        labels.append(np.array(shard_labels, dtype=np.int64))
    keys, labels = np.concatenate(keys), np.concatenate(labels)
    if len(keys) == 0:
        raise DplError(f"{root}: the shards hold no images")
    if len(np.unique(keys)) != len(keys):
        raise DplError(f"{root}: a key appears in more than one shard")
    if (labels >= 0).any() and (labels < 0).any():
        raise DplError(f"{root}: key {keys[labels < 0][0].decode()!r} has no .cls while others do")
    return Listing(root, tuple(names), keys, np.concatenate(archive), np.concatenate(offset), np.concatenate(size),
                   labels, _shard_classes(root, labels))


def _shard_files(folder: Path) -> tuple[Path, list[str]]:
    """The folder of the shards and their file names: one .tar file, or the .tar files of a folder."""
    if folder.is_file() and folder.suffix == ".tar":
        return folder.parent, [folder.name]
    root = _resolved_folder(folder)
    names = sorted(p.name for p in root.iterdir() if p.suffix == ".tar" and p.is_file())
    if not names:
        compressed = sorted(p.name for p in root.iterdir() if p.name.endswith((".tar.gz", ".tgz", ".tar.xz")))
        raise DplError(f"{root}: no .tar shards" + (
            f" ({compressed[0]} is compressed: shards must be plain tar to be read at random)" if compressed else ""))
    return root, names


def _read_shard(path: Path) -> tuple[dict[str, tuple[int, int]], list[int]]:
    """One shard's images, key -> (offset, size) in member order, and their class indices (-1: none)."""
    pending, cls = {}, {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                base = m.name.rsplit("/", 1)[-1]
                if not m.isfile() or "." not in base:
                    continue
                stem = m.name[: len(m.name) - len(base)] + base.split(".", 1)[0]
                ext = base.split(".", 1)[1].lower()
                if ext == "cls":
                    cls[stem] = tar.extractfile(m).read()
                elif "." + ext in IMAGE_SUFFIXES:
                    if pending.get(stem) is not None:
                        raise DplError(f"{path}: key {stem!r} has two images")
                    pending[stem] = (m.offset_data, m.size)
                else:
                    pending.setdefault(stem, None)
            tar.members = []
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DplError(f"{path}: not a readable plain tar shard ({e.__class__.__name__}: {e})") from None
    missing = next((stem for stem in [*cls, *pending] if pending.get(stem) is None), None)
    if missing is not None:
        raise DplError(f"{path}: key {missing!r} has no image")
    try:
        labels = [int(cls[k].decode().strip()) if cls else -1 for k in pending]
    except KeyError as e:
        raise DplError(f"{path}: key {e.args[0]!r} has no .cls while others do") from None
    except ValueError:
        raise DplError(f"{path}: a .cls member does not hold a class index") from None
    if cls and min(labels) < 0:
        raise DplError(f"{path}: negative class index in a .cls member")
    return pending, labels


def _shard_classes(root: Path, labels: np.ndarray) -> tuple[str, ...]:
    """Class names from classes.txt beside the shards (else the indices); none for unlabeled shards."""
    if labels[0] < 0:
        return ()
    names_file = root / "classes.txt"
    classes = [c for c in names_file.read_text().split("\n") if c] if names_file.is_file() else []
    classes = classes or [str(c) for c in range(int(labels.max()) + 1)]
    if labels.max() >= len(classes):
        raise DplError(f"{root}: class index {labels.max()} but {names_file.name} names {len(classes)} classes")
    return tuple(classes)


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


# ---- writing tar shards ------------------------------------------------------------------------------------

def shard_key(relative: str) -> str:
    """A file's WebDataset key: its path without the suffix, dots in the name made underscores (a key ends
    at the first dot of the member's name)."""
    folder, _, name = relative.rpartition("/")
    stem = name.rsplit(".", 1)[0].replace(".", "_")
    return f"{folder}/{stem}" if folder else stem


def pack(listing: Listing, out: Path, shard_size: int) -> list[Path]:
    """Write the listed images, bytes unchanged, into plain tar shards `shard-NNNNNN.tar` (`KEY.EXT`, and
    `KEY.cls` where the class is known) plus `classes.txt`; each shard written whole, then renamed."""
    from ..artifacts import atomic_write

    keys = [shard_key(k.decode()) for k in listing.keys]
    if len(set(keys)) != len(keys):
        seen = set()
        twice = next(k for k in keys if k in seen or seen.add(k))
        raise DplError(f"{listing.root}: two files make the shard key {twice!r}")
    written = []
    for seq, start in enumerate(range(0, len(listing), shard_size)):
        path = Path(out) / f"shard-{seq:06d}.tar"

        def write(tmp: Path, start=start) -> None:
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                for row in range(start, min(start + shard_size, len(listing))):
                    suffix = Path(listing.keys[row].decode()).suffix.lower()
                    members = [(keys[row] + suffix, listing.read_bytes(row))]
                    if listing.labels[row] >= 0:
                        members.append((keys[row] + ".cls", str(int(listing.labels[row])).encode()))
                    for name, payload in members:
                        info = tarfile.TarInfo(name)
                        info.size, info.mtime, info.mode = len(payload), 0, 0o644
                        tar.addfile(info, io.BytesIO(payload))
        atomic_write(path, write)
        written.append(path)
    if listing.classes:
        atomic_write(Path(out) / "classes.txt", lambda tmp: tmp.write_text("\n".join(listing.classes) + "\n"))
    return written
