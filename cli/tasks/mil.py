"""A MIL model's path of eval: the handler of the task table (cli/tasks/__init__.py) for task mil."""

from __future__ import annotations

import typer
from rich.table import Table

from .. import common
from ...core.engine import train
from ...core.methods import mil


def evaluate(ctx: typer.Context, o: dict) -> None:
    """dpl eval of MIL checkpoints: bag AUC and accuracy, instance AUC on their test bags
    (core.methods.mil.evaluate_checkpoint); --json adds each bag's attention weights (instance probabilities for
    max and mean pooling)."""
    rt = train.runtime(o["device"], workers=o["workers"])
    as_json = o["as_json"]
    results = [mil.evaluate_checkpoint(c, o["data_spec"], rt, o["batch_size"], o["download"], per_bag=as_json)
               for c in o["checkpoints"]]
    common.flush_notes()
    if as_json:
        return common.print_json(results[0] if len(results) == 1 else results)
    table = Table(title=f"on {results[0]['data']}: {results[0]['bags']} bags ({results[0]['positive_bags']} positive)")
    for col in ("model", "arch", "pooling", "bag AUC", "bag acc", "instance AUC", "in positive bags"):
        table.add_column(col, justify="left" if col in ("model", "arch", "pooling") else "right")
    shown = lambda v: "-" if v is None else f"{v:.4f}"        # noqa: E731
    for r in results:
        table.add_row(r["checkpoint"], r["arch"], r["pooling"], shown(r["bag_auc"]), shown(r["bag_acc"]),
                      shown(r.get("instance_auc")), shown(r.get("instance_auc_positive_bags")))
    common.stderr.print(table)
