"""Test accuracy per kind of student over seeds (mean ± sample std), from `dpl eval A B ... --json` on stdin.

Checkpoints named `.../student-KIND-seedN.safetensors` are grouped by KIND; others are listed alone. Used by
the fitnets recipe, whose hint-then-KD students start from per-seed stage-1 checkpoints: their commands differ
in more than --seed, so `dpl eval --seeds` cannot group them.
"""

import json
import re
import statistics
import sys

results = json.load(sys.stdin)
results = results if isinstance(results, list) else [results]
groups: dict[str, list[dict]] = {}
for r in results:
    m = re.search(r"student-(.+)-seed\d+", r["checkpoint"])
    groups.setdefault(m.group(1) if m else r["checkpoint"], []).append(r)
print(f"{'model':<28} {'arch':<28} {'params':>10} {'runs':>5} {'top1 mean ± std':>18} {'each':>24}")
for kind, runs in groups.items():
    top1 = [r["top1"] for r in runs]
    std = statistics.stdev(top1) if len(top1) > 1 else 0.0
    each = " ".join(f"{t:.4f}" for t in top1)
    print(f"{kind:<28} {runs[0]['arch']:<28} {runs[0]['params']:>10,} {len(runs):>5} "
          f"{statistics.mean(top1):>9.4f} ± {std:.4f} {each:>24}")
