"""The pooling comparison of recipes/mil: for each pooling and number of training bags, the test bag AUC and
instance AUC, mean ± sample std over seeds, from the test metrics each checkpoint recorded when it was trained
(the same figures `dpl eval` measures again).

    python summarize.py OUT/mil-POOLING-bagsN-seedS.safetensors ...
"""

import re
import statistics
import sys

from dpl.core import artifacts

FIGURES = (("test_bag_auc", "bag AUC"), ("test_instance_auc", "instance AUC"),
           ("test_instance_auc_positive_bags", "inst. AUC in pos. bags"), ("test_bag_acc", "bag acc"))


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


groups: dict[tuple[int, str], list[dict]] = {}
for path in sys.argv[1:]:
    m = re.search(r"mil-(\w+)-bags(\d+)-seed\d+", path)
    if m:
        groups.setdefault((int(m.group(2)), m.group(1)), []).append(artifacts.read_header(path).meta)
order = {"attention": 0, "gated": 1, "max": 2, "mean": 3}
first = next(iter(groups.values()))[0]
bags = first["mil"]["bags"]
print(f"{bags['target_name']} (class {bags['target']}) positive in bags of {first['data']['spec']}, "
      f"{bags['size']:g} ± {bags['size_std']:g} instances; test bags: {first['metrics'].get('test_spec')}, "
      f"{first['mil']['test']['bags'] if first['mil'].get('test') else '-'}")
print(f"{'bags':>5} {'pooling':<10} {'seeds':>5} " + " ".join(f"{name:>22}" for _, name in FIGURES))
for (n, pooling), metas in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9))):
    cells = []
    for key, _ in FIGURES:
        values = [m["metrics"][key] for m in metas if m["metrics"].get(key) is not None]
        cells.append(mean_std(values) if values else "-")
    print(f"{n:>5} {pooling:<10} {len(metas):>5} " + " ".join(f"{c:>22}" for c in cells))
