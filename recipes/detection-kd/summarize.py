"""The table of recipes/detection-kd (and recipes/detection-ns): per variant, the test mAP@[.5:.95] and mAP@0.5
each checkpoint recorded once trained, mean ± sample std over seeds, and the seconds per training epoch.

    python summarize.py OUT/teacher.safetensors OUT/VARIANT-seedS.safetensors ...
"""

import re
import statistics
import sys
from pathlib import Path

from dpl.core import artifacts

PAPER = {"baseline": (54.7, 25.4), "distill": (58.4, 26.1), "hint": (58.0, 27.8), "both": (59.4, 28.3)}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


groups: dict[str, list[dict]] = {}
for path in sys.argv[1:]:
    m = re.fullmatch(r"(.+?)(?:-seed\d+)?", Path(path).stem)
    groups.setdefault(m.group(1), []).append(artifacts.read_header(path).meta)
first = next(iter(groups.values()))[0]
print(f"{first['data']['spec']} ({first['data'].get('n')} images): test mAP x 100 on {first['metrics'].get('test_spec')}"
      f" (pycocotools), mean ± std over seeds")
print(f"{'variant':<12} {'arch':<14} {'seeds':>5} {'mAP@[.5:.95]':>14} {'mAP@0.5':>14} {'s/epoch':>8}   paper VOC / COCO")
for name, metas in groups.items():
    maps = [100 * m["metrics"]["test_map"] for m in metas]
    map50 = [100 * m["metrics"]["test_map50"] for m in metas]
    seconds = statistics.mean(h["seconds"] for m in metas for h in m["history"])
    paper = PAPER.get(name)
    print(f"{name:<12} {metas[0]['arch']['name']:<14} {len(metas):>5} {mean_std(maps):>14} {mean_std(map50):>14} "
          f"{seconds:>8.1f}   {f'{paper[0]} / {paper[1]}' if paper else ''}")
