"""Peak memory of a whole pass over clips at the default size and at 10x: `dpl label` of every frame of
`clips` (400 train clips of 16 frames at 64 px, then 4,000) by a small keypoint teacher, each command's peak
resident set size read by /usr/bin/time (GNU time's %M, KiB), side by side in one run.

    python bench/clip_memory.py [--scale 10] [--frames 16]

Target (issue 31): peak RSS at 10x the clips within 1.2x of the default's: frames are rendered when asked for,
so what grows with the clips is only the labels written (coordinates and confidences of every frame).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DPL = str(Path(sys.executable).with_name("dpl"))


def peak(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one dpl command."""
    start = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "%M", DPL, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"dpl {' '.join(args)} failed:\n{out.stderr}")
    return int(out.stderr.strip().splitlines()[-1]) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--frames", type=int, default=16)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        teacher = f"{tmp}/teacher.safetensors"
        subprocess.run([DPL, "teach", "--data", "poses", "--poses", "64", "--test-poses", "16", "--arch", "cnn-s",
                        "--epochs", "1", "-o", teacher], check=True, capture_output=True)
        rows = []
        for n in (a.clips, a.clips * a.scale):
            mib, seconds = peak(["label", teacher, "--data", "clips", "--clips", str(n), "--frames", str(a.frames),
                                 "-o", f"{tmp}/labels-{n}", "--force"])
            rows.append((n, mib, seconds))
            print(f"dpl label of {n:,} clips x {a.frames} frames: peak RSS {mib:,.0f} MiB, {seconds:.1f} s",
                  flush=True)
    (n0, m0, _), (n1, m1, _) = rows
    print(f"SUMMARY peak RSS at {n1:,} clips / at {n0:,}: {m1 / m0:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
