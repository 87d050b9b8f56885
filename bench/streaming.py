"""Own images at scale: memory and speed of streamed image files against the in-memory path.

Exports Fashion-MNIST's 60,000 training images as PNG files (a flat unlabeled pool), the same pool tiled 10x
(600,000 files, and the same as tar shards), and a labeled folder; then measures, side by side in one run:

  memory  peak RSS of `dpl label` and of one `dpl distill` epoch over the 600,000-image pool vs the
          60,000-image one (target: within 1.2x); the main process's peak RSS, and the peak PSS of the whole
          process tree (the main process and its DataLoader workers, shared pages counted once)
  teach   training images/s from a streamed folder vs the same images in memory (target >= 0.8)
  label   `dpl label` images/s over tar shards vs the in-memory tensor source (target >= 0.8)

  python bench/streaming.py --work /tmp/dpl-bench [--only memory,teach,label] [--rounds 2]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

DPL = Path(sys.executable).with_name("dpl")


def export(work: Path, tile: int) -> None:
    from PIL import Image

    from dpl.core import data
    from dpl.core.data import images

    ds = data.load("fashion-mnist")
    pool, big, labeled = work / "pool60k", work / "pool600k", work / "labeled12k"
    if not (work / ".exported").exists():
        for folder in (pool, big, labeled):
            folder.mkdir(parents=True, exist_ok=True)
        per_class = np.zeros(10, dtype=int)
        for i in range(len(ds)):
            buf = io.BytesIO()
            Image.fromarray(ds.images[i, 0].numpy()).save(buf, "PNG")
            raw = buf.getvalue()
            (pool / f"{i:06d}.png").write_bytes(raw)
            for t in range(tile):
                (big / f"{t}{i:06d}.png").write_bytes(raw)
            c = int(ds.labels[i])
            if per_class[c] < 1200:
                (labeled / f"c{c}").mkdir(exist_ok=True)
                (labeled / f"c{c}" / f"{i:06d}.png").write_bytes(raw)
                per_class[c] += 1
        for folder, out in ((pool, work / "tar60k"), (big, work / "tar600k")):
            out.mkdir(exist_ok=True)
            images.pack(images.list_folder(folder), out, 10_000)
        (work / ".exported").touch()
    if not (work / "t.safetensors").exists():
        run("teach", "--data", "fashion-mnist", "--labeled-per-class", "100", "--arch", "cnn-s", "--epochs", "3",
            "--device", "cpu", "-o", work / "t.safetensors")


def run(*args) -> float:
    start = time.perf_counter()
    r = subprocess.run([str(DPL), *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"dpl {' '.join(map(str, args))} failed:\n{r.stderr}")
    return time.perf_counter() - start


def _tree(pid: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _kb(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_memory(*args) -> tuple[float, float, float]:
    """(seconds, peak RSS of the main process in MB, peak PSS of the process tree in MB)."""
    proc = subprocess.Popen([str(DPL), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = [0, 0]

    def poll():
        while proc.poll() is None:
            peaks[0] = max(peaks[0], _kb(f"/proc/{proc.pid}/status", "VmRSS:"))
            peaks[1] = max(peaks[1], sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in _tree(proc.pid)))
            time.sleep(0.1)

    start = time.perf_counter()
    watcher = threading.Thread(target=poll)
    watcher.start()
    _, err = proc.communicate()
    watcher.join()
    if proc.returncode:
        sys.exit(f"dpl {' '.join(map(str, args))} failed:\n{err}")
    return time.perf_counter() - start, peaks[0] / 1024, peaks[1] / 1024


def memory(work: Path) -> None:
    t = work / "t.safetensors"
    rows = {}
    for name, spec in (("60k files", f"imagefolder:{work / 'pool60k'}"), ("600k files", f"imagefolder:{work / 'pool600k'}"),
                       ("60k tar", f"tar:{work / 'tar60k'}"), ("600k tar", f"tar:{work / 'tar600k'}")):
        labels = work / f"labels-{name.replace(' ', '-')}"
        rows[f"label {name}"] = peak_memory("label", t, "--data", spec, "--stream", "--force", "--device", "cpu",
                                           "-o", labels)
        if "files" in name:
            rows[f"distill {name}"] = peak_memory("distill", "--labels", labels, "--arch", "cnn-s", "--epochs", "1",
                                                 "--stream", "--force", "--device", "cpu", "-o", work / "s.safetensors")
    for key, (secs, rss, pss) in rows.items():
        print(f"{key:20s} {secs:8.1f} s   peak RSS {rss:8.1f} MB   peak tree PSS {pss:8.1f} MB")
    for what in ("label 600k files", "distill 600k files", "label 600k tar"):
        small = what.replace("600k", "60k")
        print(f"SUMMARY memory {what} / {small}: RSS {rows[what][1] / rows[small][1]:.3f}, "
              f"tree PSS {rows[what][2] / rows[small][2]:.3f} (target <= 1.2)")


def teach_speed(work: Path, rounds: int) -> None:
    import torch

    from dpl.core import data
    from dpl.core.engine import train
    from dpl.core.methods.common import ModelOptions, NoiseOptions
    from dpl.core.methods.teach import teach
    sys.path.insert(0, str(Path(__file__).parent))
    from timing import epoch_times

    spec = f"imagefolder:{work / 'labeled12k'}"
    rt = train.runtime("cpu")
    start = time.perf_counter()
    streamed = data.load(spec, stream=True, check_all=True)
    check = time.perf_counter() - start
    start = time.perf_counter()
    held = data.load(spec, stream=False)
    decode = time.perf_counter() - start
    cfg = train.TrainConfig(epochs=2, batch_size=128, warmup_epochs=0.5)
    rates = {"in memory": [], "streamed": []}
    for _ in range(rounds):
        for name, ds in (("in memory", held), ("streamed", streamed)):
            times = epoch_times(lambda p: teach(ds, None, ModelOptions(arch="cnn-m"), NoiseOptions(), cfg, rt, on_progress=p), rt)
            rates[name].append(len(ds) / statistics.median(times))
    for name, r in rates.items():
        print(f"teach cnn-m {len(held)} images, {name}: {', '.join(f'{v:,.0f}' for v in r)} images/s")
    print(f"one-time cost: streamed source checked (decoded once) in {check:.1f} s; in-memory decode {decode:.1f} s; "
          f"{torch.get_num_threads()} torch threads")
    ratio = statistics.median(rates["streamed"]) / statistics.median(rates["in memory"])
    print(f"SUMMARY teach streamed / in memory images/s: {ratio:.3f} (target >= 0.8)")


def label_speed(work: Path, rounds: int) -> None:
    t = work / "t.safetensors"
    secs = {"in memory": [], "tar": [], "files": []}
    for _ in range(rounds):
        secs["in memory"].append(run("label", t, "--data", "fashion-mnist", "--part", "all", "--force",
                                     "--device", "cpu", "-o", work / "l-mem"))
        secs["tar"].append(run("label", t, "--data", f"tar:{work / 'tar60k'}", "--stream", "--force",
                               "--device", "cpu", "-o", work / "l-tar"))
        secs["files"].append(run("label", t, "--data", f"imagefolder:{work / 'pool60k'}", "--stream", "--force",
                                 "--device", "cpu", "-o", work / "l-files"))
    for name, s in secs.items():
        print(f"label 60,000 images, {name}: {', '.join(f'{60_000 / v:,.0f}' for v in s)} images/s (whole command)")
    ratio = statistics.median(secs["in memory"]) / statistics.median(secs["tar"])
    print(f"SUMMARY label tar shards / in memory images/s: {ratio:.3f} (target >= 0.8)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--only", default="memory,teach,label")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tile", type=int, default=10)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    export(args.work, args.tile)
    for part in args.only.split(","):
        {"memory": lambda: memory(args.work), "teach": lambda: teach_speed(args.work, args.rounds),
         "label": lambda: label_speed(args.work, args.rounds)}[part]()


if __name__ == "__main__":
    main()
