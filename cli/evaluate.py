"""dpl eval: accuracy and calibration of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dpl.cli import common
from dpl.core import artifacts, data, evaluate, train
from dpl.cli.label import data_of, quality_table
from dpl.core.distill import check_labels_fit
from dpl.core.teach import check_input


@common.guarded
def eval_command(
    checkpoint: Annotated[Path, typer.Argument(help="The checkpoint to measure.")],
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
    checkpoint; or, for a label folder, pseudo-label accuracy overall and above confidence thresholds."""
    if checkpoint.is_dir():
        return label_quality(checkpoint, download, as_json)
    ckpt = artifacts.load_checkpoint(checkpoint)
    if data_spec is None:
        source, _ = data.parse_spec(ckpt.meta.get("data", {}).get("spec", "digits"))
        data_spec = source
    split = common.partition(labeled_per_class, labeled, split_seed)
    ds = data.load(data_spec, default_split="test", partition=split, part=part or "all", download=download)
    check_input(ckpt, ds, checkpoint)
    rt = train.runtime(device)
    model = rt.prepare(ckpt.build_model())
    logits = evaluate.predict(model, ds.images, ckpt.input, rt, batch_size)
    metrics = evaluate.classification_metrics(logits, ds.labels, ds.num_classes)
    result = {**metrics, "checkpoint": str(checkpoint), "data": ds.spec, "part": ds.part}
    if as_json:
        common.print_json(result)
        return
    table = Table(title=f"{checkpoint} on {ds.spec}" + (f" ({ds.part})" if ds.part != "all" else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("top1", "top5", "nll", "ece"):
        table.add_row(key, f"{metrics[key]:.4f}")
    table.add_row("n", str(metrics["n"]))
    for name, acc in zip(ckpt.meta.get("classes", []), metrics["per_class"]):
        table.add_row(f"class {name}", "-" if acc is None else f"{acc:.4f}")
    common.stderr.print(table)


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
