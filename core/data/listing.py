"""Image files on disk, listed once: photo folders and WebDataset tar shards (`Listing`: a row per sample, its
key, byte size, label and, for shards, where its bytes start), reading a sample's bytes, and writing tar shards
(`pack`).

Listing is cheap (names and byte sizes; for tar shards, the member headers), so a source of a million files
costs tens of MB of index, never its pixels.
"""

from __future__ import annotations

import array
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import DplError
from ..textfiles import read_text

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SUFFIXES = {os.fsencode(s) for s in IMAGE_SUFFIXES}
MAX_CLASSES = 1_000_000     # shards without classes.txt: their classes are the indices 0..max, up to this many


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
    notes = []
    for a, name in enumerate(names):
        images, shard_labels, note = _read_shard(root / name)
        notes += [note] if note else []
        # a member name that is not UTF-8 reads with surrogate escapes: back to its bytes, as a folder's names
        keys.append(np.array([k.encode("utf-8", "surrogateescape") for k in images], dtype=bytes))
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
        raise DplError(f"{root}: key {os.fsdecode(keys[labels < 0][0])!r} has no .cls while others do")
    return Listing(root, tuple(names), keys, np.concatenate(archive), np.concatenate(offset), np.concatenate(size),
                   labels, _shard_classes(root, labels), tuple(notes))


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


def _read_shard(path: Path) -> tuple[dict[str, tuple[int, int]], list[int], str | None]:
    """One shard's images, key -> (offset, size) in member order, their class indices (-1: none), and a note
    when the shard is cut short: the images before the cut are kept, the cut is said (never trained on
    silently). A tar archive ends with two zero blocks; without them, or with a member's bytes past the end of
    the file, the shard was cut (a copy or download that stopped)."""
    pending, cls, cut = {}, {}, None
    end = path.stat().st_size if path.is_file() else 0
    try:
        with tarfile.open(path, "r:") as tar:
            members = iter(tar)
            while True:
                try:
                    m = next(members, None)
                except tarfile.ReadError as e:
                    if not pending and not cls:
                        raise
                    cut = str(e)
                    break
                if m is None:
                    if tar.offset + 2 * tarfile.BLOCKSIZE > end:
                        cut = "no end-of-archive blocks"
                    break
                if m.offset_data + m.size > end:
                    cut = f"member {m.name!r} ends past the end of the file"
                    break
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
    note = None
    if cut is not None:
        if cls:       # the cut may fall between an image and its .cls
            pending = {k: v for k, v in pending.items() if k in cls}
            cls = {k: v for k, v in cls.items() if pending.get(k) is not None}
        note = f"the rest of {path}: the shard is cut short ({cut}); {len(pending)} images before the cut are read"
    missing = next((stem for stem in [*cls, *pending] if pending.get(stem) is None), None)
    if missing is not None:
        raise DplError(f"{path}: key {missing!r} has no image")
    try:
        labels = [int(cls[k].decode().strip()) if cls else -1 for k in pending]
    except KeyError as e:
        raise DplError(f"{path}: key {e.args[0]!r} has no .cls while others do") from None
    except ValueError:
        raise DplError(f"{path}: a .cls member does not hold a class index") from None
    if cls and min(labels, default=0) < 0:
        raise DplError(f"{path}: negative class index in a .cls member")
    return pending, labels, note


def _shard_classes(root: Path, labels: np.ndarray) -> tuple[str, ...]:
    """Class names from classes.txt beside the shards (else the indices); none for unlabeled shards."""
    if labels[0] < 0:
        return ()
    names_file = root / "classes.txt"
    classes = [c for c in read_text(names_file, "class list").splitlines() if c] if names_file.is_file() else []
    if not classes and labels.max() >= MAX_CLASSES:
        raise DplError(f"{root}: class index {labels.max():,} in a .cls member, and no {names_file.name} names so "
                       f"many classes (at most {MAX_CLASSES:,} without one)")
    classes = classes or [str(c) for c in range(int(labels.max()) + 1)]
    if labels.max() >= len(classes):
        raise DplError(f"{root}: class index {labels.max()} but {names_file.name} names {len(classes)} classes")
    return tuple(classes)


# ---- writing tar shards ------------------------------------------------------------------------------------

def shard_key(relative: str) -> str:
    """A file's WebDataset key: its path without the suffix, dots in the name made underscores (a key ends
    at the first dot of the member's name)."""
    folder, _, name = relative.rpartition("/")
    stem = name.rsplit(".", 1)[0].replace(".", "_")
    return f"{folder}/{stem}" if folder else stem


def shard_keys(listing: Listing) -> list[str]:
    """Every listed file's shard key, refused when two files make the same key (cat.png and cat.jpg)."""
    keys = [shard_key(os.fsdecode(k)) for k in listing.keys]
    if len(set(keys)) != len(keys):
        seen = set()
        twice = next(k for k in keys if k in seen or seen.add(k))
        raise DplError(f"{listing.root}: two files make the shard key {twice!r} (files differing only in their "
                       f"suffix, or in dots of the name); rename one")
    return keys


def pack(listing: Listing, out: Path, shard_size: int) -> list[Path]:
    """Write the listed images, bytes unchanged, into plain tar shards `shard-NNNNNN.tar` (`KEY.EXT`, and
    `KEY.cls` where the class is known) plus `classes.txt` in the folder `out`, which the caller swaps in whole
    (artifacts.replace_folder)."""
    keys = shard_keys(listing)
    written = []
    for seq, start in enumerate(range(0, len(listing), shard_size)):
        written.append(Path(out) / f"shard-{seq:06d}.tar")
        with tarfile.open(written[-1], "w", format=tarfile.PAX_FORMAT) as tar:
            for row in range(start, min(start + shard_size, len(listing))):
                try:
                    members = [(keys[row] + Path(os.fsdecode(listing.keys[row])).suffix.lower(),
                                listing.read_bytes(row))]
                except OSError as e:
                    raise DplError(f"{listing.path_of(row)}: cannot read ({e.strerror or e})") from None
                if listing.labels[row] >= 0:
                    members.append((keys[row] + ".cls", str(int(listing.labels[row])).encode()))
                for name, payload in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(payload), 0, 0o644
                    tar.addfile(info, io.BytesIO(payload))
    if listing.classes:
        (Path(out) / "classes.txt").write_text("\n".join(listing.classes) + "\n")
    return written
