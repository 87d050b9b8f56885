"""The experts recipe's table, from `dpl eval EXPERTS... STUDENT --json` (argv[1]) and the wall seconds of each
step (argv[2], lines "SECONDS NAME" written by /usr/bin/time): each expert beside the student's head measured on
the same test split, the difference in points, parameters and seconds."""

import json
import sys
from pathlib import Path

results = json.loads(Path(sys.argv[1]).read_text())
seconds: dict[str, float] = {}
if len(sys.argv) > 2 and Path(sys.argv[2]).exists():
    for line in Path(sys.argv[2]).read_text().splitlines():
        value, _, name = line.partition(" ")
        try:
            seconds[name] = float(value)       # the last run of a step counts
        except ValueError:
            pass


def secs(name: str) -> str:
    return f"{seconds[name]:.0f}" if name in seconds else "-"


experts = {r["data"]: r for r in results if "head" not in r}
heads = [r for r in results if "head" in r]
print(f"{'test data':<22} {'model':<34} {'top1':>7} {'vs expert':>10} {'params':>9} {'seconds':>8}")
for h in heads:
    e = experts.get(h["data"])
    if e is not None:
        name = Path(e["checkpoint"]).name
        print(f"{h['data']:<22} {name:<34} {e['top1']:>7.4f} {'':>10} {e['params']:>9,} {secs(name):>8}")
    diff = f"{100 * (h['top1'] - e['top1']):+.2f} pt" if e is not None else "-"
    print(f"{'':<22} {Path(h['checkpoint']).name + ' (head ' + h['head'] + ')':<34} {h['top1']:>7.4f} {diff:>10} "
          f"{h['params']:>9,}")
student = Path(heads[0]["checkpoint"]).name if heads else None
labels = sum(v for k, v in seconds.items() if k.startswith("labels-"))
print(f"one student of {heads[0]['params']:,} parameters for {len(heads)} experts of "
      f"{sum(e['params'] for e in experts.values()):,} in all; seconds: experts "
      f"{' + '.join(secs(Path(e['checkpoint']).name) for e in experts.values())}, labeling {labels:.0f}, "
      f"student {secs(student)}" if heads else "no multi-head student measured")
