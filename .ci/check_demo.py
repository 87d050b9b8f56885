#!/usr/bin/env python3
"""Check that `make demo` still shows the Noisy Student effect, with the README's figures.

    python3 .ci/check_demo.py DEMO_OUTPUT [README] [--tolerance POINTS] [--min-gain POINTS]

DEMO_OUTPUT is what `make demo` printed (its stdout saved to a file) or the demo's own `demo/summary.txt`: both
hold the comparison table of `dpl eval` (columns model, arch, params, weights, top1, ...), one row per model:
the teacher, then students 1, 2 and 3. README (default: the README.md beside .ci/) holds the same four models in
a markdown table that follows the line `<!-- demo-table -->`; in each table the first column whose header says
"top1" is the one read. The check fails, with one line on stderr and exit 1, when

  - the effect is gone: the last student is not at least 1.5 points (0.015) above the teacher (--min-gain);
  - a student is below the one before it by more than 0.5 points (0.005);
  - any of the four top-1 figures is further than the tolerance from the README's.

Exit 2: a file is missing, or holds no table of the four models.

The tolerance is 2.0 points (0.020) by default, chosen from measured spread. On one machine the demo repeats bit for
bit; across CPUs the float kernels differ, and a different rounding early in training moves the run much as a
different seed does. Measured (teacher -> students 1, 2, 3; gain = student 3 - teacher):

  make demo (seed 0), AMD EPYC with AVX-512, commit 4a833f4   0.9169 0.9348 0.9371 0.9416  +2.47  (the README's)
  make demo (seed 0), another 2-core machine (issue 28)        0.9101 0.9258 0.9258 0.9348  +2.47
  make -C recipes/noisy-student SEED=1 all, the same EPYC      0.9213 0.9191 0.9281 0.9371  +1.58
  make -C recipes/noisy-student SEED=2 all, the same EPYC      0.9281 0.9348 0.9393 0.9371  +0.90

The largest distance from the README's figure is 1.13 points across CPUs (student 2) and 1.57 across seeds
(student 1, seed 1: 7 of the 445 test images, one image being 0.22 points). 2.0 points lets through a difference of
up to 8 images and fails one of 9: the measured spread with one image to spare. A table shifted as a whole by 2.5
points fails.

The two effect thresholds are issue 28's (--min-gain changes the first). Seed 0 clears the 1.5-point gain on both
machines measured (+2.47), but seed 2 gains only +0.90: the gate is tuned to the demo's seed, and a CPU whose
rounding sends seed 0 where seed 2 went would fail it without any regression in dpl.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

TOLERANCE = 2.0        # points of top-1 (2.0 = 0.020): see the docstring
MIN_GAIN = 1.5         # points: the last student over the teacher
MAX_DROP = 0.5         # points: a student below the one before it
MARKER = "<!-- demo-table -->"
NAMES = ("teacher", "student 1", "student 2", "student 3")
FIGURE = re.compile(r"^\d+\.\d+$")


class Unreadable(Exception):
    pass


def _top1_column(header: list[str], where: str) -> int:
    for i, cell in enumerate(header):
        if "top1" in cell.lower().replace("-", ""):
            return i
    raise Unreadable(f"{where}: the table has no top1 column")


def demo_figures(text: str, where: str) -> list[float]:
    """The top1 column of the last `dpl eval` comparison table in TEXT, drawn by rich at any width (a model path
    wrapped onto a second line leaves that line's top1 cell empty, and the line is passed over)."""
    found: list[float] | None = None
    rows: list[float] | None = None
    col = -1
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)]
        if len(cells) > 2 and cells[1] == "model" and any("top1" in c for c in cells):
            col, rows = _top1_column(cells, where), []
            found = rows
        elif rows is not None and line.lstrip().startswith(("└", "╰")):
            rows, col = None, -1
        elif rows is not None and len(cells) > col and FIGURE.match(cells[col]):
            rows.append(float(cells[col]))
    if not found:
        raise Unreadable(f"{where}: no `dpl eval` table with a top1 column (is this make demo's output?)")
    return found


def readme_figures(text: str, where: str) -> list[float]:
    """The top1 column of the markdown table after the line `<!-- demo-table -->`."""
    if MARKER not in text:
        raise Unreadable(f"{where}: no line {MARKER} before the demo's table")
    lines = [l.strip() for l in text[text.index(MARKER) + len(MARKER):].splitlines()]
    lines = lines[next((i for i, l in enumerate(lines) if l), len(lines)):]
    table = [[c.strip() for c in l.strip("|").split("|")] for l in lines[:next(
        (i for i, l in enumerate(lines) if not l.startswith("|")), len(lines))]]
    if len(table) < 3:
        raise Unreadable(f"{where}: no markdown table after {MARKER}")
    col = _top1_column(table[0], where)
    figures = []
    for row in table[2:]:
        cell = re.sub(r"[*_`]", "", row[col]) if len(row) > col else ""
        if not FIGURE.match(cell):
            raise Unreadable(f"{where}: the demo table's top1 cell {cell!r} is not a number")
        figures.append(float(cell))
    return figures


def problem(demo: list[float], readme: list[float], tolerance: float, min_gain: float = MIN_GAIN) -> str | None:
    """The first thing wrong with the demo's figures, as one line; None when all is well. Figures are top-1
    fractions; tolerance and the thresholds are in points (hundredths)."""
    pts = [100 * x for x in demo]
    if len(demo) != len(NAMES) or len(readme) != len(NAMES):
        return (f"expected {len(NAMES)} models (teacher, 3 students): make demo printed {len(demo)}, "
                f"the README has {len(readme)}")
    gain = pts[-1] - pts[0]
    if gain < min_gain - 1e-9:
        return (f"the Noisy Student effect is gone: student 3 {demo[-1]:.4f} is {gain:+.2f} points over the "
                f"teacher {demo[0]:.4f}, needs at least +{min_gain}")
    for i in range(1, len(pts)):
        if pts[i] < pts[i - 1] - MAX_DROP - 1e-9:
            return (f"{NAMES[i]} {demo[i]:.4f} is {pts[i - 1] - pts[i]:.2f} points below {NAMES[i - 1]} "
                    f"{demo[i - 1]:.4f}, more than the {MAX_DROP} allowed")
    for name, got, want in zip(NAMES, demo, readme):
        if abs(got - want) * 100 > tolerance + 1e-9:
            return (f"{name} {got:.4f} is {100 * (got - want):+.2f} points from the README's {want:.4f}, "
                    f"beyond the tolerance of {tolerance} points")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path, help="make demo's stdout saved to a file, or demo/summary.txt")
    parser.add_argument("readme", type=Path, nargs="?", default=Path(__file__).resolve().parent.parent / "README.md")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"points of top-1 a figure may move from the README's (default {TOLERANCE})")
    parser.add_argument("--min-gain", type=float, default=MIN_GAIN,
                        help=f"points student 3 must gain over the teacher (default {MIN_GAIN})")
    args = parser.parse_args(argv)
    try:
        demo = demo_figures(args.demo.read_text(encoding="utf-8"), str(args.demo))
        readme = readme_figures(args.readme.read_text(encoding="utf-8"), str(args.readme))
    except (OSError, Unreadable) as e:
        print(f"check_demo: {e}", file=sys.stderr)
        return 2
    wrong = problem(demo, readme, args.tolerance, args.min_gain)
    if wrong:
        print(f"check_demo: {wrong}", file=sys.stderr)
        return 1
    print("check_demo: make demo " + " -> ".join(f"{x:.4f}" for x in demo) + f" (README "
          + " -> ".join(f"{x:.4f}" for x in readme) + f", tolerance {args.tolerance} points): the effect holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
