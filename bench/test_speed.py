"""The test suite's wall time now against its time at an earlier commit (default 4245bca, before issue 33), both
timed back to back on this machine: these machines differ from each other by 2x, so only the ratio holds.

Each commit is checked out into a git worktree with a venv of its own (`pip install -e '.[dev,...]'`, made once and
kept under --work), and its suite is run as its Makefile's `make test` runs it (pytest of its tests/ folder, in its
own checkout, Fashion-MNIST and chromium as this machine has them), alternating old and new for --rounds rounds.

    python bench/test_speed.py [--base 4245bca] [--head HEAD] [--rounds 1] [--work /tmp/dpl-test-speed]

Ends with a SUMMARY line: head / base wall time (the issue's target: at most 0.5), and each suite's pass count.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkout(commit: str, work: Path) -> Path:
    """A worktree of `commit` with its own installed venv."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", commit], capture_output=True, text=True,
                         check=True).stdout.strip()
    tree = work / sha
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), sha], check=True,
                       capture_output=True)
    if not (tree / ".venv" / ".bench-ready").exists():
        subprocess.run([sys.executable, "-m", "venv", str(tree / ".venv")], check=True)
        extras = re.search(r"pip install --quiet -e '(\.\[[^\]]*\])'", (tree / "Makefile").read_text())
        subprocess.run([str(tree / ".venv" / "bin" / "pip"), "install", "--quiet", "-e",
                        extras.group(1) if extras else ".[dev]"], cwd=tree, check=True)
        (tree / ".venv" / ".bench-ready").write_text("")
    return tree


def suite(tree: Path, args: list[str]) -> tuple[float, str]:
    """Wall time and pytest's last line."""
    t = time.perf_counter()
    done = subprocess.run([str(tree / ".venv" / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", *args], cwd=tree,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t
    last = [line for line in done.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
    return seconds, last[0]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="4245bca")
    p.add_argument("--head", default="HEAD")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/dpl-test-speed"))
    p.add_argument("--head-args", default="", help="extra pytest arguments for the head's suite")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base, head = checkout(args.base, args.work), checkout(args.head, args.work)
    times = {"base": [], "head": []}
    for r in range(args.rounds):
        for name, tree, extra in (("base", base, []), ("head", head, args.head_args.split())):
            seconds, last = suite(tree, extra)
            times[name].append(seconds)
            print(f"round {r + 1} {name} ({tree.name}): {seconds:.0f} s  {last}", flush=True)
    b, h = min(times["base"]), min(times["head"])
    print(f"SUMMARY test suite head/base wall time {h / b:.3f} ({h:.0f} s vs {b:.0f} s, best of {args.rounds}; "
          "target <= 0.5)")


if __name__ == "__main__":
    main()
