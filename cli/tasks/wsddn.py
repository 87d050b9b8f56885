"""A WSDDN model's paths of label and eval: the handlers of the task table (cli/tasks/__init__.py) for task
wsddn."""

from __future__ import annotations

import typer
from rich.table import Table

from .. import common
from ...core import DplError, artifacts
from ...core.engine import train
from ...core.methods import wsddn


def label(ctx: typer.Context, o: dict) -> None:
    """dpl label with a WSDDN model: per image, the top box of each class whose image score reaches --present,
    into a box label folder, with precision and recall at IoU 0.5 against the ground truth
    (core.methods.wsddn.label_boxes)."""
    teacher, output, present = o["teacher"], o["output"], o["present"]
    if len(teacher) > 1:
        raise DplError(f"{teacher[0]}: a WSDDN model labels alone; more checkpoints cannot apply")
    opts = wsddn.BoxLabelOptions(present=present, shard_size=o["shard_size"], batch_size=min(o["batch_size"], 256))
    stale = common.own_shards(output, 0, 1, o["force"], resume=False)
    meta = artifacts.load_checkpoint(teacher[0], task=wsddn.TASK).meta
    box = wsddn.data_of(meta, o["data_spec"], "train", o["download"])
    rt = train.runtime(o["device"], workers=o["workers"])
    for path in stale:
        path.unlink()
    done = wsddn.label_boxes(teacher[0], box, rt, opts, output)
    if o["as_json"]:
        return common.print_json({"path": str(output), **done})
    print(output)
    common.stderr.print(f"{done['boxes']:,} pseudo-boxes on {done['images']:,} images of {done['data']} "
                        f"(the top box of each class with image score >= {present:g})")
    if done["quality"]:
        common.stderr.print(common.box_quality_table(done["quality"], f"pseudo-boxes of {done['data']}"))


def evaluate(ctx: typer.Context, o: dict) -> None:
    """dpl eval of WSDDN checkpoints: CorLoc on the training images and mAP on the test images, beside the
    whole-image and objectness-only baselines (core.methods.wsddn.evaluate_checkpoint); with --data, both on
    that data."""
    rt = train.runtime(o["device"], workers=o["workers"])
    as_json = o["as_json"]
    results = [wsddn.evaluate_checkpoint(c, o["data_spec"], rt, min(o["batch_size"], 256), o["download"])
               for c in o["checkpoints"]]
    common.flush_notes()
    if as_json:
        return common.print_json(results[0] if len(results) == 1 else results)
    shown = lambda r, k: "-" if r.get(k) is None else f"{100 * r[k]:.1f}"       # noqa: E731
    for r in results:
        table = Table(title=f"{r['checkpoint']}: CorLoc on {r.get('corloc_spec', '-')} ({r.get('corloc_images', 0)} "
                            f"images), mAP on {r.get('map_spec', '-')} ({r.get('map_images', 0)} images), "
                            f"{r['proposals']} proposals"
                            + (f", boxes voted at IoU >= {r['vote']}" if r["vote"] < 1 else "") + " (%)")
        for col in ("boxes", "CorLoc", "mAP@0.5", "mAP@[.5:.95]"):
            table.add_column(col, justify="left" if col == "boxes" else "right")
        for name, prefix in (("WSDDN (cls x det)", ""), ("whole image", "whole_image_"),
                             ("objectness (cls stream alone)", "objectness_")):
            table.add_row(name, shown(r, f"{prefix}corloc"), shown(r, f"{prefix}map50"), shown(r, f"{prefix}map"))
        common.stderr.print(table)
