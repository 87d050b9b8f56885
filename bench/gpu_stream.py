"""`dpl label` from streamed tar shards of JPEG photos against the same images held in memory, on one device.

Writes N photo-like JPEGs (smooth colour fields with noise, 320x240 and 240x320), packs them into tar shards,
and labels them with a randomly initialised teacher at 224 px (bf16 on CUDA): once streamed (DataLoader workers
decode each batch: the Noisy Student bottleneck on a large pool), once from a uint8 tensor decoded beforehand.
Prints images/s of each and the ratio (target >= 0.8), and the one-time decode cost of the in-memory path.

  python bench/gpu_stream.py [--n 20000] [--arch resnet50] [--workers N] [--device cuda]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np


def write_photo(args) -> None:
    path, seed = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = (320, 240) if seed % 2 else (240, 320)
    field = rng.integers(0, 256, (h // 40, w // 40, 3), dtype=np.uint8)
    picture = Image.fromarray(field).resize((w, h), Image.BICUBIC)
    noisy = np.clip(np.asarray(picture, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=90)
    Path(path).write_bytes(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import torch

    from dpl.core import artifacts, data, models
    from dpl.core.data import images
    from dpl.core.engine import train
    from dpl.core.methods.label import LabelOptions, label

    rt = train.runtime(args.device, workers=args.workers)
    work = Path(tempfile.mkdtemp())
    folder, shards = work / "photos", work / "shards"
    folder.mkdir()
    shards.mkdir()
    start = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        pool.map(write_photo, [(folder / f"{i:07d}.jpg", i) for i in range(args.n)], chunksize=256)
    images.pack(images.list_folder(folder), shards, 5_000)
    print(f"{args.n} JPEGs written and packed in {time.perf_counter() - start:.1f} s; "
          f"{torch.cuda.get_device_name() if rt.cuda else 'CPU'}; {images.default_workers(not rt.cuda)} default workers")

    spec = models.arch_spec(args.arch, num_classes=10, in_channels=3, image_size=args.size)
    teacher = work / "t.safetensors"
    artifacts.save_checkpoint(teacher, models.build(spec), {
        "arch": spec, "num_classes": 10, "classes": [str(c) for c in range(10)],
        "input": artifacts.input_meta(3, args.size, [0.5] * 3, [0.25] * 3), "parents": []})
    source = f"tar:{shards}"
    streamed = data.load(source, resize=args.size, channels=3, stream=True)
    start = time.perf_counter()
    held = data.load(source, resize=args.size, channels=3, stream=False, workers=rt.workers)
    decode = time.perf_counter() - start
    opts = LabelOptions(batch_size=256)
    rates = {"streamed": [], "in memory": []}
    for r in range(2):
        for name, ds in (("streamed", streamed), ("in memory", held)):
            out = work / f"labels-{name.replace(' ', '-')}-{r}"
            if rt.cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            label([teacher], ds, opts, rt, out)
            if rt.cuda:
                torch.cuda.synchronize()
            rates[name].append(len(ds) / (time.perf_counter() - start))
    for name, values in rates.items():
        print(f"label {args.arch} {args.size}px, {name}: {', '.join(f'{v:,.0f}' for v in values)} images/s")
    print(f"in-memory path: decoding all {args.n} images first took {decode:.1f} s ({args.n / decode:,.0f} images/s)")
    ratio = max(rates["streamed"]) / max(rates["in memory"])
    print(f"SUMMARY label streamed tar / in memory images/s: {ratio:.3f} (target >= 0.8)")


if __name__ == "__main__":
    main()
