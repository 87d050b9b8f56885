"""dpl eval: accuracy and calibration of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import common, detect
from .measure import MeasureOptions, label_truth, measure_heads, model_name, run_identity
from ..core import DplError, artifacts
from ..core.data import boxes, scenes
from ..core.reporting import evaluate
from ..core.methods import mil, wsddn
from ..core.engine import train
from ..core.methods.detect import part_of

SEED_VARIANTS = common.SEED_VARIANTS

# What measuring a label folder takes from the command line: the rest is for checkpoints.
LABEL_FOLDER_OPTIONS = ("checkpoints", "download", "as_json", "allow_partial", "config")


@common.guarded
def eval_command(
    ctx: typer.Context,
    checkpoints: Annotated[list[Path], typer.Argument(metavar="CHECKPOINT...", help="Checkpoint(s) to measure, or a label folder.")],
    data_spec: Annotated[str | None, typer.Option("--data", autocompletion=common.complete_data, help="Data to measure on. \\[default: the test split of the checkpoint's own data source]")] = None,
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
    head: Annotated[list[str] | None, typer.Option(help="A multi-head student: measure this head only (repeatable). \\[default: every head, each on its expert's test split]", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Inference batch size.")] = 512,
    device: common.Device = "auto",
    workers: common.Workers = None,
    seeds: Annotated[bool, typer.Option("--seeds", help="Group checkpoints whose recorded commands differ only in --seed, -o/--output and options that do not change what a run computes (--device, --force, ...): one row per group, mean ± std (n-1) of top1, NLL and ECE (detectors: mAP@[.5:.95], @.5, @.75).")] = False,
    as_json: common.Json = False,
    allow_partial: common.AllowPartial = False,
    config: common.Config = None,
):
    """Top-1/top-5 accuracy, NLL, expected calibration error (15 bins) and per-class accuracy of a
    checkpoint (several: one comparison table, a JSON list); or, for a label folder, pseudo-label accuracy
    overall and above confidence thresholds.

    --linear-probe, --layer and --knn also measure frozen features: probes fit on the training split of
    the same source and are measured on the evaluated data. --seeds summarizes runs repeated with other
    seeds: {"results": [...], "groups": [...]} with --json."""
    options = dict(locals())
    if len(checkpoints) == 1 and checkpoints[0].is_dir():
        if linear_probe or layer or knn:
            raise DplError(f"{checkpoints[0]}: a label folder has no backbone to probe; give a checkpoint")
        refused = common.given(ctx, *(p.name for p in ctx.command.params if p.name not in LABEL_FOLDER_OPTIONS))
        if refused:
            raise DplError(f"{checkpoints[0]}: a label folder is measured on the data it was made for; "
                           f"{', '.join(refused)} cannot apply (give a checkpoint to measure on other data)")
        if boxes.is_box_folder(checkpoints[0]):
            return box_label_quality(checkpoints[0], download, as_json, allow_partial)
        return label_quality(checkpoints[0], download, as_json, allow_partial)
    if any(mil.is_mil(c) for c in checkpoints):
        return mil_eval(ctx, checkpoints, data_spec, download, batch_size, device, workers, as_json)
    if any(wsddn.is_wsddn(c) for c in checkpoints):
        return wsddn_eval(ctx, checkpoints, data_spec, download, batch_size, device, workers, as_json)
    if any(detect.is_detector(c) for c in checkpoints):
        return detect.evaluate(ctx, options)
    loaded = [artifacts.load_checkpoint(c) for c in checkpoints]
    rt = train.runtime(device, workers=workers)
    # A multi-head student gives a result per head: `loaded` then holds its checkpoint once per result.
    measured = [(m, ckpt) for path, ckpt in zip(checkpoints, loaded)
                for m in measure_heads(path, ckpt, MeasureOptions.of(options), rt)]
    measured, loaded = [m for m, _ in measured], [ckpt for _, ckpt in measured]
    results = [r for r, _, _ in measured]
    common.flush_notes()
    if seeds:
        groups = evaluate.seed_groups(results, [run_identity(c, r) for c, r in zip(loaded, results)], SEED_VARIANTS)
        if as_json:
            common.print_json({"results": results, "groups": groups})
        else:
            common.stderr.print(common.seed_table(groups, results[0]["data"], ("top1", "nll", "ece")))
    elif as_json:
        common.print_json(results[0] if len(results) == 1 else results)
    elif len(results) == 1:
        common.stderr.print(detail_table(results[0], results[0].get("classes") or loaded[0].meta.get("classes", [])))
    else:
        common.stderr.print(comparison_table(results))
    if measured[0][1] is not None and not as_json:
        _, dims, fit_on = measured[0]
        common.stderr.print(probe_table(results[0], dims, fit_on) if len(results) == 1
                            else probe_comparison_table(results, fit_on))


def detail_table(r: dict, classes: list[str]) -> Table:
    table = Table(title=f"{model_name(r)} on {r['data']}" + (f" ({r['part']})" if r["part"] != "all" else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("top1", "top5", "nll", "ece"):
        table.add_row(key, f"{r[key]:.4f}")
    table.add_row("n", str(r["n"]))
    table.add_row("weights", weights_note(r["weights"]))
    for name, acc in zip(classes, r["per_class"]):
        table.add_row(f"class {name}", "-" if acc is None else f"{acc:.4f}")
    return table


def comparison_table(results: list[dict]) -> Table:
    one_data = len({r["data"] for r in results}) == 1      # else (heads of a student): a column says which
    table = Table(title=f"on {results[0]['data']}" if one_data else "each on its own data")
    for col in ("model", *(() if one_data else ("data",)), "arch", "params", "weights", "top1", "top5", "nll", "ece"):
        table.add_column(col, justify="left" if col in ("model", "data", "arch", "weights") else "right")
    for r in results:
        table.add_row(model_name(r), *(() if one_data else (r["data"],)), r["arch"], f"{r['params']:,}",
                      weights_note(r["weights"]), *(f"{r[k]:.4f}" for k in ("top1", "top5", "nll", "ece")))
    return table


def weights_note(weights: dict) -> str:
    """Which weights a checkpoint holds: "best (epoch 7 of 10)", "last (epoch 10)", or "last" (older ones)."""
    kept, epoch = weights["kept"], weights.get("epoch")
    if epoch is None:
        return kept
    return f"{kept} (epoch {epoch} of {weights['epochs']})" if kept == "best" else f"{kept} (epoch {epoch})"


def label_quality(folder: Path, download: bool, as_json: bool, allow_partial: bool = False) -> None:
    labels, truth, ds = label_truth(folder, download, allow_partial)
    quality = evaluate.label_quality(labels.label, labels.confidence, truth)
    if as_json:
        common.print_json({"labels": str(folder), "data": ds.spec, "part": ds.part, **quality})
    else:
        common.stderr.print(common.quality_table(quality, f"{folder} on {ds.spec} ({ds.part}, {len(ds)} samples)"))


def box_label_quality(folder: Path, download: bool, as_json: bool, allow_partial: bool = False) -> None:
    """A box label folder (pseudo-boxes of dpl label, from a WSDDN model or a detector) against the truth of the
    images it was made for, rebuilt from its metadata: precision/recall at IoU 0.5 per score threshold, CorLoc,
    and mAP with the pseudo-boxes as detections (core.boxes.pseudo_box_quality)."""
    if allow_partial:
        raise DplError(f"{folder}: --allow-partial cannot apply to a box label folder (it is read whole)")
    labels = boxes.read_box_labels(folder)
    record = labels.meta["data"]
    split = scenes.parse_box_spec(record["spec"])[2] if scenes.is_box_spec(str(record.get("spec", ""))) else None
    full = detect.data_of(record, None, None, download, split=split or record.get("split", "train"))
    made = part_of(full, record.get("labeled_images"), record.get("split_seed", 0), record.get("part", "all"))
    if len(made) != len(labels) or made.record.get("fingerprint") != record.get("fingerprint"):
        raise DplError(f"{folder}: its images ({record.get('spec')}, {len(labels)}) are not those rebuilt from its "
                       f"metadata ({made.spec}, {len(made)}): the data has changed")
    if not len(made.truth.labels):
        raise DplError(f"{folder}: {made.spec} has no ground-truth boxes to measure its pseudo-boxes against")
    quality = boxes.pseudo_box_quality(labels.boxes, made.truth.subset(labels.index), made.classes)
    part = record.get("part", "all")
    if as_json:
        return common.print_json({"labels": str(folder), "data": made.spec, "part": part, **quality})
    title = f"{folder} on {made.spec} ({part}, {quality['images']} images, {quality['boxes']} boxes)"
    common.stderr.print(common.box_quality_table(quality["precision_recall"], title))
    common.stderr.print(f"CorLoc {100 * quality['corloc']:.1f}, mAP@0.5 {100 * quality['map50']:.1f}, "
                        f"mAP@[.5:.95] {100 * quality['map']:.1f} (%; the pseudo-boxes as detections)")


def probe_table(r: dict, dims: dict[str, int], fit_on: str) -> Table:
    """One checkpoint: a row per probed layer (as in the RotNet paper's per-layer table), then kNN."""
    table = Table(title="frozen-feature probes", caption=f"{model_name(r)}; fit on {fit_on}, top-1 on {r['data']}")
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
        table.add_row(model_name(r), *(f"{found[c]:.4f}" if c in found else "-" for c in columns))
    return table


# What measuring MIL checkpoints (dpl mil) takes from the command line: the rest is for classifiers.
MIL_OPTIONS = ("checkpoints", "data_spec", "download", "batch_size", "device", "workers", "as_json", "config")


def mil_eval(ctx: typer.Context, checkpoints: list[Path], data_spec: str | None, download: bool, batch_size: int,
             device: str, workers: int | None, as_json: bool) -> None:
    """Bag AUC and accuracy, instance AUC of MIL checkpoints on their test bags (core.mil.evaluate_checkpoint);
    --json adds each bag's attention weights (instance probabilities for max and mean pooling)."""
    refused = common.given(ctx, *(p.name for p in ctx.command.params if p.name not in MIL_OPTIONS))
    if refused:
        raise DplError(f"{checkpoints[0]}: a MIL model is measured on bags; {', '.join(refused)} cannot apply")
    rt = train.runtime(device, workers=workers)
    results = [mil.evaluate_checkpoint(c, data_spec, rt, batch_size, download, per_bag=as_json) for c in checkpoints]
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


# What measuring WSDDN checkpoints (dpl wsddn) takes from the command line: the rest is for classifiers.
WSDDN_OPTIONS = ("checkpoints", "data_spec", "download", "batch_size", "device", "workers", "as_json", "config")


def wsddn_eval(ctx: typer.Context, checkpoints: list[Path], data_spec: str | None, download: bool, batch_size: int,
               device: str, workers: int | None, as_json: bool) -> None:
    """CorLoc on the training images and mAP on the test images of WSDDN checkpoints, beside the whole-image and
    objectness-only baselines (core.wsddn.evaluate_checkpoint); with --data, both on that data."""
    refused = common.given(ctx, *(p.name for p in ctx.command.params if p.name not in WSDDN_OPTIONS))
    if refused:
        raise DplError(f"{checkpoints[0]}: a WSDDN model is measured on images with boxes; {', '.join(refused)} "
                       "cannot apply")
    other = next((c for c in checkpoints if not wsddn.is_wsddn(c)), None)
    if other is not None:
        raise DplError(f"{other}: not a WSDDN model; measure WSDDN models apart from other checkpoints")
    rt = train.runtime(device, workers=workers)
    results = [wsddn.evaluate_checkpoint(c, data_spec, rt, min(batch_size, 256), download) for c in checkpoints]
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
