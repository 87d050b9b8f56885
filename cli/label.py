"""dpl label: un-noised teacher(s) write pseudo-label shards for the unlabeled data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dpl.cli import common
from dpl.core import DplError, artifacts, data, train
from dpl.core.label import LabelOptions, label, write_folder


def data_of(meta: dict, data_spec: str | None, split: data.Partition) -> tuple[str, data.Partition]:
    """Default to the data (and partition) an artifact was made from, so pipelines name the same samples."""
    made = meta.get("data", {})
    if data_spec is None:
        data_spec = made.get("spec", "digits")
    if not split.active and ("labeled_per_class" in made or "labeled" in made):
        split = data.Partition(made.get("labeled_per_class"), made.get("labeled"), made.get("split_seed", 0))
    return data_spec, split


@common.guarded
def label_command(
    teacher: Annotated[list[Path], typer.Argument(help="Teacher checkpoint(s); several are an ensemble (mean probabilities).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The label folder to write.")],
    data_spec: Annotated[str | None, typer.Option("--data", help="Data to label. [default: the teacher's training data]")] = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    ensemble: Annotated[list[Path] | None, typer.Option(help="More teachers to average with the first (repeatable).")] = None,
    soft: Annotated[bool, typer.Option("--soft/--hard", help="Store full probabilities, or only label + confidence.")] = True,
    topk: Annotated[int | None, typer.Option(min=1, help="Store only the top K classes' probabilities (int32 + float16).")] = None,
    tau: Annotated[float, typer.Option(help="Softmax temperature applied to the teacher logits.")] = 1.0,
    shard_size: Annotated[int, typer.Option(min=1, help="Samples per shard file.")] = 50_000,
    batch_size: Annotated[int, typer.Option(min=1, help="Inference batch size.")] = 512,
    device: common.Device = "auto",
    force: common.Force = False,
    as_json: common.Json = False,
    config: common.Config = None,
):
    """Label the unlabeled part (or the whole split) with an un-noised teacher. Reports label accuracy
    against the ground truth when the data has it."""
    teachers = list(teacher) + list(ensemble or [])
    if output.exists() and not force:
        raise DplError(f"{output} exists; pass --force to replace it")
    if output.exists() and not output.is_dir():
        raise DplError(f"{output} is a file, not a label folder")
    artifacts.check_writable(output)
    if topk is not None and not soft:
        raise DplError("--topk stores soft labels; it cannot go with --hard")
    opts = LabelOptions(mode="topk" if topk else ("soft" if soft else "hard"), topk=topk, tau=tau,
                        shard_size=shard_size, batch_size=batch_size)
    first = artifacts.read_header(teachers[0], kind="checkpoint")
    spec, split = data_of(first.meta, data_spec, common.partition(labeled_per_class, labeled, split_seed))
    ds = data.load(spec, partition=split, part=part or ("unlabeled" if split.active else "all"), download=download)
    rt = train.runtime(device)
    with common.TrainingProgress("label") as progress:
        shards, meta, quality = label(teachers, ds, opts, rt, on_progress=progress)
    write_folder(output, shards, meta, force)
    if as_json:
        common.print_json({"path": str(output), "total": meta["total"], "shards": len(shards), "quality": quality})
    else:
        print(output)
    if quality is not None and not as_json:
        common.stderr.print(quality_table(quality, f"pseudo-labels of {ds.spec} ({ds.part}, {len(ds)} samples)"))


def quality_table(quality: dict, title: str) -> Table:
    table = Table(title=title + f": accuracy {quality['accuracy']:.4f}")
    for col in ("confidence >=", "coverage", "accuracy", "n"):
        table.add_column(col, justify="right")
    for row in quality["thresholds"]:
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        table.add_row(f"{row['threshold']:.2f}", f"{row['coverage']:.4f}", acc, str(row["n"]))
    return table
