"""Mean test accuracy per kind of student over seeds, from `dpl eval A B ... --json` on stdin.

Checkpoints named `.../student-KIND-seedN.safetensors` are grouped by KIND; others are listed alone.
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
print(f"{'model':<28} {'arch':<28} {'params':>10} {'runs':>5} {'mean top1':>10} {'each':>24}")
for kind, runs in groups.items():
    each = " ".join(f"{r['top1']:.4f}" for r in runs)
    print(f"{kind:<28} {runs[0]['arch']:<28} {runs[0]['params']:>10,} {len(runs):>5} "
          f"{statistics.mean(r['top1'] for r in runs):>10.4f} {each:>24}")
