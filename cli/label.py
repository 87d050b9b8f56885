"""dpl label: un-noised teacher(s) write pseudo-label shards for the unlabeled data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from . import common, detect
from ..core import DplError, artifacts, data
from ..core.engine import distributed, train
from ..core.methods import wsddn
from ..core.methods.label import LabelOptions, label, label_heads, shard_files


@common.guarded
def label_command(
    ctx: typer.Context,
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
    head: Annotated[list[str] | None, typer.Option(help="A multi-head student (dpl distill --labels A/ --labels B/): label with this head only (repeatable). \\[default: every head, each into OUTPUT/HEAD/]", show_default=False)] = None,
    soft: Annotated[bool, typer.Option("--soft/--hard", help="Store full probabilities, or only label + confidence.")] = True,
    topk: Annotated[int | None, typer.Option(min=1, help="Store only the top K classes' probabilities (int32 + float16).")] = None,
    tau: Annotated[float, typer.Option(help="Softmax temperature applied to the teacher logits.")] = 1.0,
    shard_size: Annotated[int, typer.Option(min=1, help="Samples per shard file.")] = 50_000,
    present: Annotated[float, typer.Option(help="A WSDDN model (dpl wsddn): the image score from which a class counts as present; each present class gets its top box.")] = 0.5,
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
    writes its own shard series; the folder is complete when every rank's shards are there. A multi-head
    student writes a label folder per head, OUTPUT/HEAD/."""
    options = dict(locals())
    if wsddn.is_wsddn(teacher[0]):
        return wsddn_label(ctx, teacher, output, data_spec, download, present, shard_size, batch_size, device, workers,
                           force, as_json)
    if common.given(ctx, "present"):
        raise DplError(f"{teacher[0]}: --present applies to a WSDDN model's pseudo-boxes, not to a classifier's labels")
    if detect.is_detector(teacher[0]):
        return detect.label(options)
    teachers = list(teacher) + list(ensemble or [])
    rank, world = distributed.shard_of(shard)
    first = artifacts.read_header(teachers[0], kind="checkpoint")
    heads = _heads_of(teachers, first, head)
    if heads:
        artifacts.check_writable(output)
        if output.exists() and not output.is_dir():
            raise DplError(f"{output} is a file, not a folder for the heads' label folders")
        mine = [s for name in heads for s in _own_shards(output / name, rank, world, force, resume, check=False)]
    else:
        mine = _own_shards(output, rank, world, force, resume)
    opts = LabelOptions(mode="hard" if not soft else ("topk" if topk else "soft"), topk=topk, tau=tau,
                        shard_size=shard_size, batch_size=batch_size)
    spec, split, size = common.data_of(first.meta, data_spec, common.partition(options), resize)
    ds = data.load(spec, partition=split, part=part or ("unlabeled" if split.active else "all"), download=download,
                   resize=size, channels=first.meta.get("input", {}).get("channels"), stream=stream, workers=workers)
    common.say_inherited("labels", f"the teacher {teachers[0]}", first.meta, data_spec, common.partition(options),
                         resize, ds)
    common.say_source(ds)
    rt = train.runtime(device, workers=workers)
    stale = mine if force and not resume else []
    with common.TrainingProgress("label") as progress:
        if heads:
            done = label_heads(teachers[0], heads, ds, opts, rt, output, rank, world, resume, stale, progress)
        else:
            done = label(teachers, ds, opts, rt, output, rank, world, resume, replace=stale, on_progress=progress)
    if as_json:
        common.print_json({"path": str(output), "heads": done} if heads else {"path": str(output), **done})
    elif rank == 0 or shard is not None:       # under torchrun only rank 0 speaks; --shard jobs each do
        for d in done if heads else [done]:
            _report(Path(d["folder"]) if heads else output, d, ds, f" by head {d['head']}" if heads else "")


def _heads_of(teachers: list[Path], first: artifacts.Header, chosen: list[str] | None) -> list[str]:
    """The names of the heads to label with: a multi-head student's (those of --head, else all); [] for
    ordinary teachers, which --head cannot apply to."""
    heads = [h["name"] for h in first.meta.get("heads") or []]
    if not heads:
        if chosen:
            raise DplError(f"{teachers[0]}: a model with one output has no heads (--head picks one of a multi-head "
                           "student's)")
        return []
    if len(teachers) > 1:
        raise DplError(f"{teachers[0]}: a multi-head student labels alone, a folder per head: no --ensemble")
    unknown = [n for n in chosen or [] if n not in heads]
    if unknown:
        raise DplError(f"{teachers[0]}: no head {unknown[0]!r}; its heads: {', '.join(heads)}")
    return list(dict.fromkeys(chosen)) if chosen else heads


def _own_shards(output: Path, rank: int, world: int, force: bool, resume: bool, check: bool = True) -> list[Path]:
    """The shards of this rank (of every rank, alone) already in the output folder, which must be writable
    (`check`; a head's folder is made inside the output folder, checked once)."""
    if output.exists() and not output.is_dir():
        raise DplError(f"{output} is a file, not a label folder")
    mine = shard_files(output, None if world == 1 else rank) if output.is_dir() else []
    if mine and not (force or resume):
        raise DplError(f"{output} exists with label shards; pass --force to replace them or --resume to complete them")
    if check:
        artifacts.check_writable(output)
    return mine


def _report(output: Path, done: dict, ds: data.Dataset, by: str = "") -> None:
    print(output)
    if done["skipped"]:
        common.stderr.print(f"skipped {done['skipped']} unreadable image files (listed in the shards' metadata)")
    if done["quality"] is not None:
        part = f", part {done['rank']}/{done['world']}" if done["world"] > 1 else ""
        common.stderr.print(common.quality_table(done["quality"], f"pseudo-labels{by} of {ds.spec} ({ds.part}, "
                                                 f"{done['samples']} samples{part})"))


# What labeling with a WSDDN model (dpl wsddn) takes from the command line: the rest is for classifiers.
WSDDN_OPTIONS = ("teacher", "output", "data_spec", "download", "batch_size", "shard_size", "device", "workers", "force",
                 "as_json", "config", "present")


def wsddn_label(ctx: typer.Context, teacher: list[Path], output: Path, data_spec: str | None, download: bool,
                present: float, shard_size: int, batch_size: int, device: str, workers: int | None, force: bool,
                as_json: bool) -> None:
    """Pseudo-boxes of a WSDDN model: per image, the top box of each class whose image score reaches --present,
    into a box label folder, with precision and recall at IoU 0.5 against the ground truth
    (core.wsddn.label_boxes)."""
    refused = common.given(ctx, *(p.name for p in ctx.command.params if p.name not in WSDDN_OPTIONS))
    if len(teacher) > 1 or refused:
        raise DplError(f"{teacher[0]}: a WSDDN model labels alone; {', '.join(refused) or 'more checkpoints'} "
                       "cannot apply")
    opts = wsddn.BoxLabelOptions(present=present, shard_size=shard_size, batch_size=min(batch_size, 256))
    stale = _own_shards(output, 0, 1, force, resume=False)
    meta = artifacts.load_checkpoint(teacher[0], task=wsddn.TASK).meta
    box = wsddn.data_of(meta, data_spec, "train", download)
    rt = train.runtime(device, workers=workers)
    for path in stale:
        path.unlink()
    done = wsddn.label_boxes(teacher[0], box, rt, opts, output)
    if as_json:
        return common.print_json({"path": str(output), **done})
    print(output)
    common.stderr.print(f"{done['boxes']:,} pseudo-boxes on {done['images']:,} images of {done['data']} "
                        f"(the top box of each class with image score >= {present:g})")
    if done["quality"]:
        common.stderr.print(common.box_quality_table(done["quality"], f"pseudo-boxes of {done['data']}"))
