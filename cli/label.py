"""dpl label: un-noised teacher(s) write pseudo-label shards for the unlabeled data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dpl.cli import common
from dpl.core import DplError, artifacts, data, distributed, train
from dpl.core.label import LabelOptions, label, shard_files

Resize = Annotated[int | None, typer.Option(
    min=1, help="Resize the images to SxS first. \\[default: the --resize of the teacher (or labels) given]")]


def data_of(meta: dict, data_spec: str | None, split: data.Partition,
            resize: int | None) -> tuple[str, data.Partition, int | None]:
    """Default to the data (partition, --resize) an artifact was made from, so pipelines name the same samples."""
    made = meta.get("data", {})
    same_source = data_spec is None or data.parse_spec(data_spec)[0] == data.parse_spec(made.get("spec", "digits"))[0]
    if data_spec is None:
        data_spec = made.get("spec", "digits")
    # The artifact's partition belongs to its own source: another source (a pool) is not partitioned by it.
    if not split.active and same_source and ("labeled_per_class" in made or "labeled" in made):
        split = data.Partition(made.get("labeled_per_class"), made.get("labeled"), made.get("split_seed", 0))
    resize = resize or made.get("resize")
    if resize is None and data.is_image_files(data_spec) and "input" in meta:
        resize = meta["input"]["size"]       # image files are decoded at the size the model takes
    return data_spec, split, resize


@common.guarded
def label_command(
    teacher: Annotated[list[Path], typer.Argument(help="Teacher checkpoint(s); several are an ensemble (mean probabilities).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The label folder to write.")],
    data_spec: Annotated[str | None, typer.Option("--data", help="Data to label. \\[default: the teacher's training data]")] = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: Resize = None,
    stream: common.Stream = None,
    ensemble: Annotated[list[Path] | None, typer.Option(help="More teachers to average with the first (repeatable).")] = None,
    soft: Annotated[bool, typer.Option("--soft/--hard", help="Store full probabilities, or only label + confidence.")] = True,
    topk: Annotated[int | None, typer.Option(min=1, help="Store only the top K classes' probabilities (int32 + float16).")] = None,
    tau: Annotated[float, typer.Option(help="Softmax temperature applied to the teacher logits.")] = 1.0,
    shard_size: Annotated[int, typer.Option(min=1, help="Samples per shard file.")] = 50_000,
    batch_size: Annotated[int, typer.Option(min=1, help="Inference batch size.")] = 512,
    shard: Annotated[str | None, typer.Option(help="Label only part I of N (I/N, from 0): N independent jobs fill one folder. \\[default: the torchrun rank, else 0/1]")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Keep the shards already in the folder that match this run; label the rest.")] = False,
    device: common.Device = "auto",
    workers: common.Workers = None,
    force: common.Force = False,
    as_json: common.Json = False,
    config: common.Config = None,
):
    """Label the unlabeled part (or the whole split) with an un-noised teacher. Reports label accuracy
    against the ground truth when the data has it. Under torchrun, each rank labels its own part and
    writes its own shard series; the folder is complete when every rank's shards are there."""
    teachers = list(teacher) + list(ensemble or [])
    rank, world = distributed.shard_of(shard)
    if output.exists() and not output.is_dir():
        raise DplError(f"{output} is a file, not a label folder")
    mine = shard_files(output, None if world == 1 else rank) if output.is_dir() else []
    if mine and not (force or resume):
        raise DplError(f"{output} exists with label shards; pass --force to replace them or --resume to complete them")
    artifacts.check_writable(output)
    if topk is not None and not soft:
        raise DplError("--topk stores soft labels; it cannot go with --hard")
    opts = LabelOptions(mode="topk" if topk else ("soft" if soft else "hard"), topk=topk, tau=tau,
                        shard_size=shard_size, batch_size=batch_size)
    first = artifacts.read_header(teachers[0], kind="checkpoint")
    spec, split, resize = data_of(first.meta, data_spec, common.partition(labeled_per_class, labeled, split_seed), resize)
    ds = data.load(spec, partition=split, part=part or ("unlabeled" if split.active else "all"), download=download,
                   resize=resize, channels=first.meta.get("input", {}).get("channels"), stream=stream, workers=workers)
    common.say_source(ds)
    rt = train.runtime(device, workers=workers)
    with common.TrainingProgress("label") as progress:
        done = label(teachers, ds, opts, rt, output, rank, world, resume, replace=mine if force and not resume else [],
                     on_progress=progress)
    quality = done["quality"]
    if as_json:
        common.print_json({"path": str(output), **done})
    elif rank == 0 or shard is not None:       # under torchrun only rank 0 speaks; --shard jobs each do
        print(output)
    if done["skipped"] and not as_json and (rank == 0 or shard is not None):
        common.stderr.print(f"skipped {done['skipped']} unreadable image files (listed in the shards' metadata)")
    if quality is not None and not as_json and (rank == 0 or shard is not None):
        part = f", part {rank}/{world}" if world > 1 else ""
        common.stderr.print(quality_table(quality, f"pseudo-labels of {ds.spec} ({ds.part}, {done['samples']} samples{part})"))


def quality_table(quality: dict, title: str) -> Table:
    table = Table(title=title + f": accuracy {quality['accuracy']:.4f}")
    for col in ("confidence >=", "coverage", "accuracy", "n"):
        table.add_column(col, justify="right")
    for row in quality["thresholds"]:
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        table.add_row(f"{row['threshold']:.2f}", f"{row['coverage']:.4f}", acc, str(row["n"]))
    return table
