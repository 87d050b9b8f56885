"""The figures of recipes/wsddn, mean ± sample std over seeds: CorLoc (training scenes) and mAP (test scenes) of
WSDDN beside its two baselines, from the metrics each checkpoint recorded once trained (the same figures
`dpl eval` measures again), and the precision/recall at IoU 0.5 of the pseudo-boxes in each box label folder.

    python summarize.py OUT/wsddn-seedS.safetensors ... OUT/boxes-seedS/ ...
"""

import statistics
import sys
from pathlib import Path

from dpl.core import artifacts
from dpl.core.data.boxes import read_box_labels


def mean_std(values: list[float]) -> str:
    values = [100 * v for v in values]
    return f"{statistics.mean(values):5.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:4.1f}"


models = [artifacts.read_header(p).meta for p in sys.argv[1:] if p.endswith(".safetensors")]
folders = [read_box_labels(Path(p)) for p in sys.argv[1:] if not p.endswith(".safetensors")]
first = models[0]
scenes = first["data"]["scenes"]
print(f"WSDDN on scenes of {scenes['source']} ({scenes['canvas']} px, {scenes['objects'][0]}-{scenes['objects'][1]} "
      f"objects of {scenes['scale'][0]}-{scenes['scale'][1]} px): {first['data']['n']} training scenes, "
      f"{first['wsddn']['test']['n']} test scenes, {first['wsddn']['proposals']} proposals, {first['arch']['name']}, "
      f"{first['train']['epochs']} epochs; seeds {', '.join(str(m['seed']) for m in models)} (mean ± std, %)")
print(f"{'boxes':34} {'CorLoc':>12} {'mAP@0.5':>12} {'mAP@[.5:.95]':>12}")
refine = first["wsddn"].get("refine", 0)
for name, prefix in ((f"WSDDN + {refine} refinement streams" if refine else "WSDDN (cls x det)", ""),
                     ("whole image", "whole_image_"),
                     ("objectness (cls stream alone)", "objectness_")):
    print(f"{name:34} " + " ".join(f"{mean_std([m['metrics'][prefix + k] for m in models]):>12}"
                                   for k in ("corloc", "map50", "map")))
vote = first["wsddn"].get("vote", 1.0)
if vote < 1 and all("proposal_corloc" in m["metrics"] for m in models):
    print(f"the boxes above are voted (proposals overlapping the top one by IoU >= {vote}, score-weighted); "
          "the top proposal alone:")
    for name, key in (("WSDDN, top proposal", "proposal_corloc"),
                      ("objectness, top proposal", "objectness_proposal_corloc")):
        print(f"{name:34} {mean_std([m['metrics'][key] for m in models]):>12}")
seconds = [sum(h.get("seconds", 0.0) for h in m["history"]) for m in models]
print(f"training time {statistics.mean(seconds) / 60:.1f} min per run (the epochs alone)")
if folders:
    present = folders[0].meta.get("present")
    print(f"pseudo-boxes (top box of each class with image score >= {present}), IoU 0.5, over the training scenes:")
    print(f"{'score >=':>9} {'precision':>12} {'recall':>12}")
    for k, row in enumerate(folders[0].meta["box_quality"]):
        print(f"{row['threshold']:9.2f} {mean_std([f.meta['box_quality'][k]['precision'] for f in folders]):>12} "
              f"{mean_std([f.meta['box_quality'][k]['recall'] for f in folders]):>12}")
