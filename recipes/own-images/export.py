"""Export a dpl source as the photos a user has: RGB JPEGs of mixed sizes and aspect ratios.

    python export.py SOURCE OUT --labeled-per-class N --pool M [--test K] [--seed S]

writes OUT/labeled/train/CLASS/*.jpg (N per class), OUT/labeled/test/CLASS/*.jpg (K per class, from the
source's test split) and OUT/unlabeled/*.jpg (M images of the training split not in labeled/, one flat
folder, no labels). Each image is upscaled to a random side of 20-48 px and centred on a canvas up to 1.5x
wider or taller, so the folder has many sizes and shapes; the classes stay in the centre square.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def write_photo(pixels: np.ndarray, path: Path, rng: np.random.Generator) -> None:
    """uint8 (C, H, W) -> a JPEG of a random size and shape at `path`."""
    from PIL import Image

    side = int(rng.integers(20, 49))
    pad = int(rng.integers(0, side // 2 + 1))
    wide = bool(rng.integers(0, 2))
    picture = Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))
    picture = picture.convert("RGB").resize((side, side), Image.BILINEAR)
    canvas = Image.new("RGB", (side + pad, side) if wide else (side, side + pad))
    canvas.paste(picture, (pad // 2, 0) if wide else (0, pad // 2))
    canvas.save(path, quality=92)


def export(source: str, out: Path, labeled_per_class: int, pool: int, test: int = 0, seed: int = 0) -> None:
    from dpl.core import data

    rng = np.random.default_rng(seed)
    train = data.load(source)
    labels = train.labels.numpy()
    order = rng.permutation(len(train))
    taken = np.zeros(len(train), dtype=bool)
    for c, name in enumerate(train.classes):
        folder = out / "labeled" / "train" / name.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for i in order[labels[order] == c][:labeled_per_class]:
            write_photo(train.images[i].numpy(), folder / f"{i:06d}.jpg", rng)
            taken[i] = True
    flat = out / "unlabeled"
    flat.mkdir(parents=True, exist_ok=True)
    for i in order[~taken[order]][:pool]:
        write_photo(train.images[i].numpy(), flat / f"{i:06d}.jpg", rng)
    if test:
        held = data.load(source, default_split="test")
        for c, name in enumerate(train.classes):
            folder = out / "labeled" / "test" / name.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(held.labels.numpy() == c)[:test]:
                write_photo(held.images[i].numpy(), folder / f"{i:06d}.jpg", rng)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("out", type=Path)
    parser.add_argument("--labeled-per-class", type=int, required=True)
    parser.add_argument("--pool", type=int, required=True)
    parser.add_argument("--test", type=int, default=0, help="test images per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    export(args.source, args.out, args.labeled_per_class, args.pool, args.test, args.seed)
