"""dpl eval: accuracy and calibration of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import common
from ..core import DplError, artifacts, data, evaluate, label, models, train
from ..core.runs import check_input

# What measuring a label folder takes from the command line: the rest is for checkpoints.
LABEL_FOLDER_OPTIONS = ("checkpoints", "download", "as_json", "allow_partial", "config")


@common.guarded
def eval_command(
    ctx: typer.Context,
    checkpoints: Annotated[list[Path], typer.Argument(metavar="CHECKPOINT...", help="Checkpoint(s) to measure, or a label folder.")],
    data_spec: Annotated[str | None, typer.Option("--data", help="Data to measure on. \\[default: the test split of the checkpoint's own data source]")] = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: common.Resize = None,
    stream: common.Stream = None,
    linear_probe: Annotated[bool, typer.Option("--linear-probe", help="Train a linear classifier on frozen features of the training split (its labeled part with --labeled-per-class); report its top-1 here.")] = False,
    layer: Annotated[list[str] | None, typer.Option(help="Also probe this layer (module path; repeatable), average-pooled to at most 2048 values. Implies --linear-probe.")] = None,
    knn: Annotated[list[int] | None, typer.Option(min=1, help="Weighted kNN top-1 on frozen features with K neighbours (repeatable; cosine, temperature 0.07).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Inference batch size.")] = 512,
    device: common.Device = "auto",
    workers: common.Workers = None,
    as_json: common.Json = False,
    allow_partial: common.AllowPartial = False,
    config: common.Config = None,
):
    """Top-1/top-5 accuracy, NLL, expected calibration error (15 bins) and per-class accuracy of a
    checkpoint (several: one comparison table, a JSON list); or, for a label folder, pseudo-label accuracy
    overall and above confidence thresholds.

    --linear-probe, --layer and --knn also measure frozen features: probes fit on the training split of
    the same source and are measured on the evaluated data."""
    options = dict(locals())
    if len(checkpoints) == 1 and checkpoints[0].is_dir():
        if linear_probe or layer or knn:
            raise DplError(f"{checkpoints[0]}: a label folder has no backbone to probe; give a checkpoint")
        refused = common.given(ctx, *(p.name for p in ctx.command.params if p.name not in LABEL_FOLDER_OPTIONS))
        if refused:
            raise DplError(f"{checkpoints[0]}: a label folder is measured on the data it was made for; "
                           f"{', '.join(refused)} cannot apply (give a checkpoint to measure on other data)")
        return label_quality(checkpoints[0], download, as_json, allow_partial)
    loaded = [artifacts.load_checkpoint(c) for c in checkpoints]
    rt = train.runtime(device, workers=workers)
    measured = [measure(path, ckpt, options, rt) for path, ckpt in zip(checkpoints, loaded)]
    results = [r for r, _, _ in measured]
    common.flush_notes()
    if as_json:
        common.print_json(results[0] if len(results) == 1 else results)
    elif len(results) == 1:
        common.stderr.print(detail_table(results[0], loaded[0].meta.get("classes", [])))
    else:
        common.stderr.print(comparison_table(results))
    if measured[0][1] is not None and not as_json:
        _, dims, fit_on = measured[0]
        common.stderr.print(probe_table(results[0], dims, fit_on) if len(results) == 1
                            else probe_comparison_table(results, fit_on))


def measure(path: Path, ckpt: artifacts.Checkpoint, o: dict, rt: train.Runtime) -> tuple[dict, dict | None, str]:
    """One checkpoint's metrics on its data (and its probes: their feature sizes and what they were fit on)."""
    split = common.partition(o)
    spec = o["data_spec"] or data.parse_spec(ckpt.meta.get("data", {}).get("spec", "digits"))[0]
    size = o["resize"] or ckpt.meta.get("data", {}).get("resize")
    if size is None and data.is_image_files(spec):
        size = ckpt.input["size"]
    ds = data.load(spec, default_split="test", partition=split, part=o["part"] or "all", download=o["download"],
                   resize=size, channels=ckpt.input["channels"], stream=o["stream"], workers=o["workers"])
    common.say_source(ds)
    check_input(ckpt, ds, path)
    model = ckpt.build_model()
    logits = evaluate.predict(rt.prepare(model), ds.images, ckpt.input, rt, o["batch_size"], rt.workers)
    metrics = evaluate.classification_metrics(logits, ds.labels, ds.num_classes)
    unread = int((~evaluate.readable(logits)).sum()) + len(ds.skipped)
    if unread:
        metrics["skipped"] = unread
    result = {**metrics, "checkpoint": str(path), "arch": ckpt.arch["name"], "params": models.count_params(model),
              "data": ds.spec, "part": ds.part}
    layers, ks = list(o["layer"] or []), list(o["knn"] or [])
    if not (o["linear_probe"] or layers or ks):
        return result, None, ""
    probe_train = data.load(ds.source, default_split="train", partition=split, part="labeled" if split.active else "all",
                            download=o["download"], resize=size, channels=ckpt.input["channels"], check_all=True,
                            workers=o["workers"])
    found = evaluate.probe(model, ckpt.input, probe_train, ds, rt, layers, o["linear_probe"] or bool(layers), ks,
                           o["batch_size"])
    result.update({"linear_probe": found.linear, "knn": {str(k): v for k, v in found.knn.items()}})
    return result, found.dims, f"{probe_train.spec} ({probe_train.part}, {len(probe_train)} samples)"


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


def label_quality(folder: Path, download: bool, as_json: bool, allow_partial: bool = False) -> None:
    labels = artifacts.read_labels(folder, allow_partial)
    made = labels.meta["data"]
    spec, split, resize = common.data_of(labels.meta, None, data.Partition(), None)
    ds = data.load(spec, partition=split, part=made.get("part", "all"), download=download, resize=resize,
                   channels=made.get("channels"))
    positions = label.check_labels_fit(labels, ds)
    quality = evaluate.label_quality(labels.label, labels.confidence, ds.labels[positions])
    if as_json:
        common.print_json({"labels": str(folder), "data": ds.spec, "part": ds.part, **quality})
    else:
        common.stderr.print(common.quality_table(quality, f"{folder} on {ds.spec} ({ds.part}, {len(ds)} samples)"))


def probe_table(r: dict, dims: dict[str, int], fit_on: str) -> Table:
    """One checkpoint: a row per probed layer (as in the RotNet paper's per-layer table), then kNN."""
    table = Table(title="frozen-feature probes", caption=f"{r['checkpoint']}; fit on {fit_on}, top-1 on {r['data']}")
    for col in ("probe", "features", "top1"):
        table.add_column(col, justify="left" if col == "probe" else "right")
    for path, top1 in r["linear_probe"].items():
        table.add_row(f"linear {path}", f"{dims[path]:,}", f"{top1:.4f}")
    for k, top1 in r["knn"].items():
        table.add_row(f"kNN k={k}", f"{dims[evaluate.FEATURES]:,}", f"{top1:.4f}")
    return table


def probe_comparison_table(results: list[dict], fit_on: str) -> Table:
    """Several checkpoints: a row each, a column per probe."""
    table = Table(title="frozen-feature probes", caption=f"fit on {fit_on}, top-1 on {results[0]['data']}")
    columns = list(dict.fromkeys([f"linear {p}" for r in results for p in r["linear_probe"]]
                                 + [f"kNN k={k}" for r in results for k in r["knn"]]))
    table.add_column("model")
    for col in columns:
        table.add_column(col, justify="right")
    for r in results:
        found = {**{f"linear {p}": v for p, v in r["linear_probe"].items()}, **{f"kNN k={k}": v for k, v in r["knn"].items()}}
        table.add_row(r["checkpoint"], *(f"{found[c]:.4f}" if c in found else "-" for c in columns))
    return table
