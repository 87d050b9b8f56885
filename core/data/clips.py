"""Clips: data with time. A clip is a sequence of square frames of one size; a clip set is N clips, each with
its length, an action class (or -1) and, for synthetic clips, per-frame keypoints.

Frames are made when asked for (`frames`), never held as a whole: a synthetic clip renders the frames asked for
from its own random stream (core/data/clip_figures.py), a folder of clips decodes the files asked for
(core/data/clip_files.py). So a clip set's memory does not grow with its length or count, and a pretext task that
reads 3 frames of a clip decodes 3.

Specs: `clips[:SOURCE][:SPLIT]` (figures performing actions, textured from SOURCE as `poses:` are),
`moving:SOURCE[:SPLIT]` (objects of a classification source moving over a background, for tracking) and
`clipfolder:PATH[:SPLIT]` (clips on disk: a folder per clip of frame images sorted by name, or video files).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .. import DplError

CLIP_SOURCES = ("clips", "moving", "clipfolder")


@dataclass
class ClipSet:
    """N clips. Subclasses make frames (`_frames`); this class holds what every clip set records."""

    spec: str                          # the data spec it was read from
    record: dict                       # the data record for meta["data"]: spec, split, n, fingerprint, ...
    lengths: np.ndarray                # int64 (N,): frames in each clip
    labels: torch.Tensor               # int64 (N,): the clip's action class, -1 where unknown
    classes: list[str]                 # action class names ([] when the clips carry none)
    channels: int                      # 1 or 3
    size: int                          # frames are size x size
    rows: np.ndarray = field(default=None)     # int64 (N,): the underlying clip of each row (subset keeps them)
    notes: tuple[str, ...] = ()        # what was passed over, one line each, for the CLI to say

    def __post_init__(self):
        if self.rows is None:
            self.rows = np.arange(len(self.lengths), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    @property
    def has_keypoints(self) -> bool:
        return False

    def frames(self, clips, times) -> torch.Tensor:
        """uint8 (n, m, C, S, S): frames `times` (n, m) of clips `clips` (n,), row indices of this set."""
        clips = np.asarray(clips, dtype=np.int64).reshape(-1)
        times = np.asarray(times, dtype=np.int64).reshape(len(clips), -1)
        if len(clips) and ((times < 0) | (times >= self.lengths[clips][:, None])).any():
            raise IndexError("frame index outside its clip")
        return self._frames(self.rows[clips], times)

    def clip(self, i: int) -> torch.Tensor:
        """uint8 (T, C, S, S): every frame of clip row i."""
        return self.frames([i], np.arange(self.lengths[i])[None])[0]

    def subset(self, index) -> ClipSet:
        index = np.asarray(index, dtype=np.int64)
        return replace(self, lengths=self.lengths[index], labels=self.labels[torch.from_numpy(index)],
                       rows=self.rows[index], record={**self.record, "n": len(index)})

    def _frames(self, rows: np.ndarray, times: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


def is_clip_spec(spec: str) -> bool:
    """Whether a data spec names clips."""
    return spec.partition(":")[0] in CLIP_SOURCES


def check_length(clips: ClipSet, need: int, what: str) -> tuple[ClipSet, str | None]:
    """The clips at least `need` frames long, and a note counting those skipped; refused when none is."""
    long = np.flatnonzero(clips.lengths >= need)
    if len(long) == 0:
        raise DplError(f"{clips.spec}: no clip has the {need} frames {what} needs (the longest has "
                       f"{int(clips.lengths.max()) if len(clips) else 0})")
    if len(long) == len(clips):
        return clips, None
    return clips.subset(long), f"{len(clips) - len(long)} of {len(clips)} clips shorter than the {need} frames " \
                               f"{what} needs skipped"


def load_clips(spec: str, split: str, made=None, size: int | None = None, channels: int | None = None) -> ClipSet:
    """The clips a spec names; `split` is the default where the spec has none; `made` a ClipSpec saying how
    synthetic clips are made (its source is the spec's; None: the defaults); `size`, `channels` for clip folders."""
    from dataclasses import replace as _replace

    kind = spec.partition(":")[0]
    if kind == "clipfolder":
        from .clip_files import read_clip_folder
        return read_clip_folder(spec, split, size=size, channels=channels)
    from .clip_figures import ClipSpec, build_clips, parse_clip_spec
    kind, source, given = parse_clip_spec(spec)
    made = _replace(made, source=source) if made is not None else ClipSpec(source=source)
    return build_clips(made, given or split, kind)
