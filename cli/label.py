"""dpl label: un-noised teacher(s) write pseudo-label shards for the unlabeled data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from . import common
from ..core import DplError, artifacts, data, distributed, train
from ..core.label import LabelOptions, label, shard_files


@common.guarded
def label_command(
    teacher: Annotated[list[Path], typer.Argument(help="Teacher checkpoint(s); several are an ensemble (mean probabilities).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The label folder to write.")],
    data_spec: Annotated[str | None, typer.Option("--data", autocompletion=common.complete_data, help="Data to label. \\[default: the teacher's training data]")] = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: common.Resize = None,
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
    options = dict(locals())
    teachers = list(teacher) + list(ensemble or [])
    rank, world = distributed.shard_of(shard)
    mine = _own_shards(output, rank, world, force, resume)
    opts = LabelOptions(mode="hard" if not soft else ("topk" if topk else "soft"), topk=topk, tau=tau,
                        shard_size=shard_size, batch_size=batch_size)
    first = artifacts.read_header(teachers[0], kind="checkpoint")
    spec, split, size = common.data_of(first.meta, data_spec, common.partition(options), resize)
    ds = data.load(spec, partition=split, part=part or ("unlabeled" if split.active else "all"), download=download,
                   resize=size, channels=first.meta.get("input", {}).get("channels"), stream=stream, workers=workers)
    common.say_inherited("labels", f"the teacher {teachers[0]}", first.meta, data_spec, common.partition(options),
                         resize, ds)
    common.say_source(ds)
    rt = train.runtime(device, workers=workers)
    with common.TrainingProgress("label") as progress:
        done = label(teachers, ds, opts, rt, output, rank, world, resume, replace=mine if force and not resume else [],
                     on_progress=progress)
    if as_json:
        common.print_json({"path": str(output), **done})
    elif rank == 0 or shard is not None:       # under torchrun only rank 0 speaks; --shard jobs each do
        _report(output, done, ds)


def _own_shards(output: Path, rank: int, world: int, force: bool, resume: bool) -> list[Path]:
    """The shards of this rank (of every rank, alone) already in the output folder, which must be writable."""
    if output.exists() and not output.is_dir():
        raise DplError(f"{output} is a file, not a label folder")
    mine = shard_files(output, None if world == 1 else rank) if output.is_dir() else []
    if mine and not (force or resume):
        raise DplError(f"{output} exists with label shards; pass --force to replace them or --resume to complete them")
    artifacts.check_writable(output)
    return mine


def _report(output: Path, done: dict, ds: data.Dataset) -> None:
    print(output)
    if done["skipped"]:
        common.stderr.print(f"skipped {done['skipped']} unreadable image files (listed in the shards' metadata)")
    if done["quality"] is not None:
        part = f", part {done['rank']}/{done['world']}" if done["world"] > 1 else ""
        common.stderr.print(common.quality_table(done["quality"], f"pseudo-labels of {ds.spec} ({ds.part}, "
                                                 f"{done['samples']} samples{part})"))
