"""`Dataset`: what `data.load` returns, uint8 images (in memory, or an `images.ImageStore` decoded on demand) with
int64 labels (-1 where unknown), the part and partition it was taken as, and its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch

from . import images as image_files
from .images import ImageStore
from .partition import Holdout, Partition
from .sources import HFLIP_OK, NORMALIZATION, union_members

MAX_LISTED = 1000     # skipped files named in an artifact's metadata (all are counted)


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
