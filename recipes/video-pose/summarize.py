"""The video tables over seeds: each model's few-shot accuracy (mean ± std over the out-seed*/summary.json found,
one value per seed: the mean over its episodes), then the same for out-seed*/temporal.json (the temporal pretext
tasks) where any.

    python recipes/video-pose/summarize.py [recipes/video-pose]
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(root: Path) -> None:
    tables = [sorted(root.glob(f"out-seed*/{name}")) for name in ("summary.json", "temporal.json")]
    if not any(tables):
        sys.exit(f"no out-seed*/summary.json or temporal.json under {root}")
    for runs in filter(None, tables):
        table(runs)


def table(runs: list[Path]) -> None:
    found = defaultdict(lambda: defaultdict(list))
    shots = []
    for run in runs:
        for row in json.loads(run.read_text()):
            key = (Path(row["checkpoint"]).stem, row["features"])
            for k, v in row.items():
                if k.startswith("shot") and not k.endswith("_std"):
                    found[key][k].append(v)
                    shots = shots if k in shots else [*shots, k]
    print(f"{runs[0].name}: few-shot action accuracy, mean ± std over {len(runs)} seed(s) ({', '.join(r.parent.name for r in runs)})")
    print(f"| model | features | {' | '.join(f'{s[4:]}-shot' for s in shots)} |")
    print(f"|---|---|{'---|' * len(shots)}")
    for (model, features), by in found.items():
        cells = [f"{statistics.mean(by[s]):.4f} ± {statistics.stdev(by[s]) if len(by[s]) > 1 else 0:.4f}"
                 for s in shots]
        print(f"| {model} | {features} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
