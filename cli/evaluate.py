"""dpl eval: accuracy and calibration of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dpl.cli import common
from dpl.core import artifacts, data, evaluate, models, train
from dpl.cli.label import data_of, quality_table
from dpl.core.distill import check_labels_fit
from dpl.core.teach import check_input


@common.guarded
def eval_command(
    checkpoints: Annotated[list[Path], typer.Argument(metavar="CHECKPOINT...", help="Checkpoint(s) to measure, or a label folder.")],
    data_spec: Annotated[str | None, typer.Option("--data", help="Data to measure on. [default: the test split of the checkpoint's own data source]")] = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Inference batch size.")] = 512,
    device: common.Device = "auto",
    as_json: common.Json = False,
    config: common.Config = None,
):
    """Top-1/top-5 accuracy, NLL, expected calibration error (15 bins) and per-class accuracy of a
    checkpoint (several: one comparison table, a JSON list); or, for a label folder, pseudo-label accuracy
    overall and above confidence thresholds."""
    if len(checkpoints) == 1 and checkpoints[0].is_dir():
        return label_quality(checkpoints[0], download, as_json)
    loaded = [artifacts.load_checkpoint(c) for c in checkpoints]
    split = common.partition(labeled_per_class, labeled, split_seed)
    rt = train.runtime(device)
    results = []
    for path, ckpt in zip(checkpoints, loaded):
        spec = data_spec or data.parse_spec(ckpt.meta.get("data", {}).get("spec", "digits"))[0]
        ds = data.load(spec, default_split="test", partition=split, part=part or "all", download=download)
        check_input(ckpt, ds, path)
        model = ckpt.build_model()
        logits = evaluate.predict(rt.prepare(model), ds.images, ckpt.input, rt, batch_size)
        metrics = evaluate.classification_metrics(logits, ds.labels, ds.num_classes)
        results.append({**metrics, "checkpoint": str(path), "arch": ckpt.arch["name"],
                        "params": models.count_params(model), "data": ds.spec, "part": ds.part})
    if as_json:
        common.print_json(results[0] if len(results) == 1 else results)
    elif len(results) == 1:
        common.stderr.print(detail_table(results[0], loaded[0].meta.get("classes", [])))
    else:
        common.stderr.print(comparison_table(results))


def detail_table(r: dict, classes: list[str]) -> Table:
    table = Table(title=f"{r['checkpoint']} on {r['data']}" + (f" ({r['part']})" if r["part"] != "all" else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("top1", "top5", "nll", "ece"):
        table.add_row(key, f"{r[key]:.4f}")
    table.add_row("n", str(r["n"]))
    for name, acc in zip(classes, r["per_class"]):
        table.add_row(f"class {name}", "-" if acc is None else f"{acc:.4f}")
    return table


def comparison_table(results: list[dict]) -> Table:
    table = Table(title=f"on {results[0]['data']}")
    for col in ("model", "arch", "params", "top1", "top5", "nll", "ece"):
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")
    for r in results:
        table.add_row(r["checkpoint"], r["arch"], f"{r['params']:,}",
                      *(f"{r[k]:.4f}" for k in ("top1", "top5", "nll", "ece")))
    return table


def label_quality(folder: Path, download: bool, as_json: bool) -> None:
    labels = artifacts.read_labels(folder)
    made = labels.meta["data"]
    spec, split = data_of(labels.meta, None, data.Partition())
    ds = data.load(spec, partition=split, part=made.get("part", "all"), download=download)
    check_labels_fit(labels, ds)
    quality = evaluate.label_quality(labels.label, labels.confidence, ds.labels)
    if as_json:
        common.print_json({"labels": str(folder), "data": ds.spec, "part": ds.part, **quality})
    else:
        common.stderr.print(quality_table(quality, f"{folder} on {ds.spec} ({ds.part}, {len(ds)} samples)"))
