"""Clips on disk: `clipfolder:PATH[:SPLIT]`.

PATH holds one entry per clip, or, where it has split folders (train/, test/, val/), PATH/SPLIT does (a folder
without them is the train split, as `imagefolder:`'s):

    a folder of frame images (any of listing.IMAGE_SUFFIXES), the frames in file-name order (byte order: pad the
    numbers, frame10.png sorts before frame2.png; sub-folders are not read), or
    a video file (.mp4, .avi, .mov, .mkv, .webm), its frames in presentation order, read through torchcodec's
    VideoDecoder (FFmpeg's shared libraries: apt-get install ffmpeg), else PyAV (pip install av, its own FFmpeg).

An entry's name is the clip's name (a video's with its suffix). Optional PATH/labels.csv, one for every split so
that class indices agree between them: a header `clip,label`, then a line per clip, its name and a class name.
Classes are the names sorted; a clip without a line (every clip, without labels.csv) has label -1.

Frames are decoded when asked for (`frames`), never held, by images.py's one policy: an image frame by
`images.decode`, a video's by `images.conform` (the same conversion, resize and crop). S is `size`, else the median
shorter side of the first, middle and last frames of up to PROBE_CLIPS clips spread over the set, at most
images.DEFAULT_MAX_SIZE; channels are `channels`, else grey when those frames are all grey (a video's are colour).

Passed over and said in `notes`: a clip folder without frame images, a video without frames, other files, clips
without a label, probed clips whose frames differ in size (each frame is resized to S alone). Refused (DplError):
a PATH that does not exist, no clip left, labels.csv malformed (by line) or naming clips that are not there, no
video decoder, a video that cannot be opened, and a frame that cannot be decoded, when it is decoded: a clip with
a hole is not a clip.
"""
from __future__ import annotations

import collections
import csv
import functools
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import DplError
from ..textfiles import read_text
from . import images
from .clips import ClipSet
from .listing import _image_files
from .sources import SPLITS

CLIP_FOLDER = "clipfolder"
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
LABELS_FILE = "labels.csv"
SPLIT_FOLDERS = ("train", "test", "val")
PROBE_CLIPS = 16            # clips whose first, middle and last frames choose the default side and mode
OPEN_VIDEOS = 8             # video decoders kept open per process (opening one scans the file)
INSTALL = "apt-get install ffmpeg (FFmpeg's shared libraries, for torchcodec) or pip install av (PyAV)"


@dataclass(eq=False)
class ClipFolder(ClipSet):
    """Clips read from a folder, their frames decoded on demand."""

    folder: Path = None                 # the folder holding the clips (PATH or PATH/SPLIT)
    names: list[str] = field(default_factory=list)        # every underlying clip's entry name (rows index them)
    frame_files: list = field(default_factory=list)       # per clip: frame file names (bytes, sorted), or None: a video
    backend: str | None = None          # "torchcodec" or "av" where there are videos

    def _frames(self, rows: np.ndarray, times: np.ndarray) -> torch.Tensor:
        n, m = times.shape
        out = torch.empty((n, m, self.channels, self.size, self.size), dtype=torch.uint8)
        for i, row in enumerate(rows):
            wanted, back = np.unique(times[i], return_inverse=True)       # a frame asked twice is decoded once
            out[i] = torch.from_numpy(self._decoded(int(row), wanted)[back])
        return out

    def _decoded(self, row: int, wanted: np.ndarray) -> np.ndarray:
        """uint8 (len(wanted), C, S, S): frames `wanted` (sorted, unique) of underlying clip `row`."""
        entry = self.folder / self.names[row]
        files = self.frame_files[row]
        out = np.empty((len(wanted), self.channels, self.size, self.size), dtype=np.uint8)
        if files is None:
            for j, pixels in enumerate(_video(entry, self.backend).read(wanted)):
                out[j] = images.conform(pixels, self.size, self.channels)
            return out
        for j, t in enumerate(wanted):
            path = entry / os.fsdecode(files[t])
            try:
                out[j] = images.decode(path.read_bytes(), self.size, self.channels)
            except Exception as e:      # PIL and torchcodec raise many kinds on a bad file
                raise DplError(f"{path}: frame {t} of clip {self.names[row]!r} cannot be decoded "
                               f"({_first_line(e)}); a clip with a hole is not a clip") from None
        return out


def read_clip_folder(spec: str, split: str | None, size: int | None = None, channels: int | None = None) -> ClipFolder:
    """The clips of `clipfolder:PATH[:SPLIT]`; `split` is the default where the spec names none; frames of side
    `size` and `channels` channels (None: from the probe, as the module docstring says)."""
    root, given = parse_spec(spec)
    split = given or split or "train"
    folder = images.split_folder(root, split)
    names, frame_files, notes = _list_clips(folder, labels_read=folder == root)
    videos = [name for name, files in zip(names, frame_files) if files is None]
    backend = _video_backend(folder / videos[0]) if videos else None
    lengths = []
    for name, files in zip(names, frame_files):
        lengths.append(len(files) if files is not None else _video(folder / name, backend).length)
    lengths = np.array(lengths, dtype=np.int64)
    if (lengths == 0).any():
        empty = [names[i] for i in np.flatnonzero(lengths == 0)]
        notes.append(f"skipped {len(empty)} videos without frames in {folder} (first: {empty[0]})")
        keep = np.flatnonzero(lengths > 0)
        if not len(keep):
            raise DplError(f"{folder}: no clip left: no video has a frame")
        names, frame_files, lengths = [names[i] for i in keep], [frame_files[i] for i in keep], lengths[keep]
    side, colour, mixed = _probe(folder, names, frame_files, backend)
    size = size or min(side, images.DEFAULT_MAX_SIZE)
    if not 1 <= size <= images.MAX_SIZE:
        raise DplError(f"{folder}: the frame side must be between 1 and {images.MAX_SIZE}, got {size}")
    channels = channels or (3 if colour else 1)
    if mixed:
        notes.append(f"{len(mixed)} of the clips probed have frames of different sizes (first: {mixed[0]}): each "
                     f"frame is resized to {size}x{size} on its own")
    labels, classes, unlabeled = _labels(root, folder, names)
    if classes and unlabeled:
        notes.append(f"{len(unlabeled)} clips have no line in {root / LABELS_FILE}: label -1 (first: {unlabeled[0]})")
    record = {"spec": f"{CLIP_FOLDER}:{root}:{split}", "split": split, "n": len(names),
              "fingerprint": _fingerprint(folder, names, frame_files, lengths, labels, classes), "clips": "folder",
              "image_size": [size, size], "channels": channels, "classes": classes}
    return ClipFolder(spec=record["spec"], record=record, lengths=lengths, labels=torch.from_numpy(labels),
                      classes=classes, channels=channels, size=size, notes=tuple(notes), folder=folder, names=names,
                      frame_files=frame_files, backend=backend)


def parse_spec(spec: str) -> tuple[Path, str | None]:
    """`clipfolder:PATH[:SPLIT]` -> (absolute path, split or None)."""
    rest = spec.partition(":")[2]
    path, _, split = rest.rpartition(":")
    if not path or split not in SPLITS:
        path, split = rest, None
    if not path:
        raise DplError(f"{CLIP_FOLDER} needs a path: {CLIP_FOLDER}:PATH[:SPLIT]")
    return Path(path).expanduser().absolute(), split


def _entries(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """(clip folders, video files, other files) directly in `folder`, each sorted by name."""
    dirs, videos, other = [], [], []
    try:
        with os.scandir(folder) as found:
            for e in found:
                try:
                    if e.is_dir():
                        dirs.append(e.name)
                    elif e.is_file():
                        (videos if Path(e.name).suffix.lower() in VIDEO_SUFFIXES else other).append(e.name)
                except OSError:         # a dangling link or a symlink loop: not a clip
                    continue
    except OSError as e:
        raise DplError(f"{folder}: cannot list ({e.strerror})") from None
    return sorted(dirs), sorted(videos), sorted(other)


def _list_clips(folder: Path, labels_read: bool) -> tuple[list[str], list, list[str]]:
    """(clip names sorted, their frame file names or None for a video, notes) of one split's folder; its
    labels.csv is not among the files said to be ignored where it is the one read."""
    dirs, videos, other = _entries(folder)
    other = [f for f in other if f != LABELS_FILE or not labels_read]
    clips, empty = {}, []
    for d in dirs:
        files = _image_files(folder / d)[0]
        if len(files):
            clips[d] = files
        else:
            empty.append(d)
    clips.update((v, None) for v in videos)
    notes = []
    if empty:
        notes.append(f"skipped {len(empty)} clip folders without frame images in {folder} (first: {empty[0]})")
    if other:
        notes.append(f"ignored {len(other)} files in {folder} that are neither videos nor folders (first: {other[0]})")
    if not clips:
        raise DplError(f"{folder}: no clips" + (f" ({len(empty)} folders, none with frame images)" if empty else "")
                       + f": a folder of frame images or a video file ({', '.join(sorted(VIDEO_SUFFIXES))}) per clip")
    names = sorted(clips)
    return names, [clips[n] for n in names], notes


def _probe(folder: Path, names: list[str], frame_files: list, backend: str | None) -> tuple[int, bool, list[str]]:
    """(median shorter side, whether any frame is colour, names of clips whose frames differ in size) from the
    first, middle and last frames of up to PROBE_CLIPS clips spread evenly."""
    from PIL import Image

    picked = np.unique(np.linspace(0, len(names) - 1, min(PROBE_CLIPS, len(names))).round().astype(np.int64))
    sides, colour, mixed = [], False, []
    for i in picked:
        files, entry = frame_files[i], folder / names[i]
        if files is None:
            w, h = _video(entry, backend).shape
            sides.append(min(w, h))
            colour, shapes = True, {(w, h)}
            continue
        shapes = set()
        for t in sorted({0, len(files) // 2, len(files) - 1}):
            path = entry / os.fsdecode(files[t])
            try:
                with Image.open(path) as im:
                    shapes.add(im.size)
                    sides.append(min(im.size))
                    colour = colour or im.mode not in images.GREY_MODES
            except Exception as e:      # PIL raises many kinds on a bad file
                raise DplError(f"{path}: frame {t} of clip {names[i]!r} cannot be read ({_first_line(e)}); a clip "
                               "with a hole is not a clip") from None
        if len(shapes) > 1:
            mixed.append(names[i])
    return int(np.median(sides)), colour, mixed


def _read_labels(path: Path) -> dict[str, str]:
    """clip name -> class name from labels.csv: a header clip,label, then a line per clip."""
    reader = csv.reader(io.StringIO(read_text(path, "clip labels file"), newline=""), strict=True)
    labels, header = {}, False
    try:
        for row in reader:
            fields = [f.strip() for f in row]
            if not any(fields):
                continue
            where = f"{path}: line {reader.line_num}"
            if not header:
                if [f.lower() for f in fields] != ["clip", "label"]:
                    raise DplError(f"{where}: {','.join(fields)!r} is not the header clip,label")
                header = True
            elif len(fields) != 2 or not all(fields):
                raise DplError(f"{where}: {','.join(row)!r} is not clip,label")
            elif fields[0] in labels:
                raise DplError(f"{where}: clip {fields[0]!r} is labeled twice")
            else:
                labels[fields[0]] = fields[1]
    except csv.Error as e:
        raise DplError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
    if not header:
        raise DplError(f"{path}: empty; a header clip,label, then a line per clip")
    return labels


def _labels(root: Path, folder: Path, names: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """(label per clip, -1 where none; classes; clips without a line) from PATH/labels.csv."""
    path = root / LABELS_FILE
    if not path.is_file():
        return np.full(len(names), -1, dtype=np.int64), [], []
    given = _read_labels(path)
    splits = [root / s for s in SPLIT_FOLDERS if (root / s).is_dir()] or [root]
    present = set()
    for s in splits:
        dirs, videos, _ = _entries(s)
        present.update(dirs + videos)
    missing = [c for c in given if c not in present]
    if missing:
        where = " or ".join(str(s) for s in splits)
        raise DplError(f"{path}: {len(missing)} clips named are not in {where}: "
                       f"{', '.join(map(repr, missing[:3]))}{', ...' if len(missing) > 3 else ''}")
    classes = sorted(set(given.values()))
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([index[given[n]] if n in given else -1 for n in names], dtype=np.int64)
    return labels, classes, [n for n in names if n not in given]


def _fingerprint(folder: Path, names: list[str], frame_files: list, lengths: np.ndarray, labels: np.ndarray,
                 classes: list[str]) -> str:
    """sha256 over the classes and every clip's name, length and label, each frame file's name and byte size, each
    video's byte size: cheap (no pixels), so a file rewritten in place at the same size keeps it."""
    h = hashlib.sha256("\n".join(classes).encode())
    h.update(np.ascontiguousarray(lengths).tobytes() + np.ascontiguousarray(labels).tobytes())
    for name, files in zip(names, frame_files):
        h.update(os.fsencode(name) + b"\0")
        entry = folder / name
        paths = [entry] if files is None else [entry / os.fsdecode(f) for f in files]
        for p in paths:
            h.update(os.fsencode(p.name) + b"\0" + p.stat().st_size.to_bytes(8, "little"))
    return h.hexdigest()


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# ---- videos -----------------------------------------------------------------------------------------------

def _video_backend(example: Path) -> str:
    """"torchcodec" where its FFmpeg libraries load, else "av" where PyAV imports; refused when neither does."""
    backend = _available_backend()
    if backend is None:
        raise DplError(f"{example}: decoding video clips needs torchcodec with FFmpeg's shared libraries or PyAV: "
                       f"{INSTALL}")
    return backend


@functools.cache
def _available_backend() -> str | None:
    try:
        import torchcodec
        if torchcodec.ffmpeg_major_version is not None:
            return "torchcodec"
    except Exception:           # not installed, or built for another torch: its libraries fail in many ways
        pass
    try:
        import av  # noqa: F401
    except ImportError:
        return None
    return "av"


_VIDEOS: collections.OrderedDict = collections.OrderedDict()


def _video(path: Path, backend: str) -> _TorchcodecVideo | _PyAVVideo:
    """The open video at `path`: a few kept per process (DataLoader workers are forked: never share a decoder)."""
    key = (os.getpid(), path, backend)
    if key in _VIDEOS:
        _VIDEOS.move_to_end(key)
        return _VIDEOS[key]
    video = (_TorchcodecVideo if backend == "torchcodec" else _PyAVVideo)(path)
    _VIDEOS[key] = video
    while len(_VIDEOS) > OPEN_VIDEOS:
        _VIDEOS.popitem(last=False)
    return video


class _TorchcodecVideo:
    def __init__(self, path: Path):
        from torchcodec.decoders import VideoDecoder

        self.path = path
        try:
            self.decoder = VideoDecoder(str(path), seek_mode="exact")      # scans the file: exact frame count
            meta = self.decoder.metadata
        except Exception as e:          # FFmpeg's errors come as RuntimeError or ValueError, in many words
            raise DplError(f"{path}: not a video FFmpeg can read ({_first_line(e)})") from None
        self.length, self.shape = len(self.decoder), (meta.width, meta.height)

    def read(self, wanted: np.ndarray) -> np.ndarray:
        """uint8 (len(wanted), 3, H, W): frames `wanted`."""
        try:
            return self.decoder.get_frames_at([int(t) for t in wanted]).data.numpy()
        except Exception as e:
            raise DplError(f"{self.path}: frames {wanted.tolist()} cannot be decoded ({_first_line(e)}); a clip with "
                           "a hole is not a clip") from None


class _PyAVVideo:
    """PyAV has no frame index: a read decodes from the start to the last frame asked for."""

    def __init__(self, path: Path):
        import av

        self.path = path
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                self.shape = (stream.codec_context.width, stream.codec_context.height)
                self.length = sum(1 for packet in container.demux(stream) if packet.size)
        except (av.FFmpegError, IndexError) as e:
            raise DplError(f"{path}: not a video PyAV can read ({_first_line(e)})") from None

    def read(self, wanted: np.ndarray) -> np.ndarray:
        import av

        out, at, k = [], {int(t) for t in wanted}, -1
        try:
            with av.open(str(self.path)) as container:
                for k, frame in enumerate(container.decode(container.streams.video[0])):
                    if k in at:
                        out.append(frame.to_ndarray(format="rgb24").transpose(2, 0, 1))
                        if len(out) == len(wanted):
                            break
        except av.FFmpegError as e:
            raise DplError(f"{self.path}: frames cannot be decoded ({_first_line(e)}); a clip with a hole is not a "
                           "clip") from None
        if len(out) < len(wanted):
            raise DplError(f"{self.path}: frame {int(wanted[len(out)])} is not there (the video decodes {k + 1} "
                           "frames); a clip with a hole is not a clip")
        return np.stack(out)
