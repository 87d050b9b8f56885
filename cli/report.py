"""dpl report: one self-contained HTML page of a pipeline's outputs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from . import common
from ..core import DplError

artifacts, records, train = common.artifacts, common.records, common.train
evaluate, report = common.lazy("dpl.core.reporting.evaluate"), common.lazy("dpl.core.reporting.report")
measuring = common.lazy("dpl.cli.measure")


@common.guarded
def report_command(
    paths: Annotated[list[Path], typer.Argument(
        metavar="FOLDER_OR_ARTIFACT...",
        help="A pipeline's output folder (its checkpoints and label folders are found in it), or checkpoints "
             "and label folders named one by one.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the HTML page.", rich_help_panel=common.Panel.OUTPUT)],
    title: Annotated[str | None, typer.Option(help="Title of the page. \\[default: dpl report of the first path]", rich_help_panel=common.Panel.OUTPUT)] = None,
    device: common.Device = "auto",
    force: common.Force = False,
):
    """One self-contained HTML page of a pipeline's outputs.

    The comparison table of every checkpoint on its test data (the figures of dpl eval --json), the lineage
    of the last model, the training curves, the pseudo-label quality of each label folder and calibration.
    Figures are embedded, nothing is fetched."""
    common.check_output(output, force, {"paths": paths})
    if output.is_file() and not output.read_bytes()[:512].lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise DplError(f"{output} is not an HTML page: --force replaces an earlier report, not another file")
    checkpoints, folders = find_artifacts(paths)
    if not checkpoints and not folders:
        raise DplError(f"{', '.join(map(str, paths))}: no dpl checkpoints or label folders found")
    rt = train.runtime(device)
    models = [model_of(path, rt) for path in checkpoints]
    last = last_model(models)
    page = report.Report(
        title=title or f"dpl report: {paths[0].resolve().name}",
        models=models, last=last, lineage=records.lineage_of(last.path) if last else [],
        labels=[label_folder_of(folder) for folder in folders])
    html = report.render(page)
    artifacts.atomic_write(output, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    common.flush_notes()
    print(output)


def find_artifacts(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Checkpoints and label folders among the paths: a folder of label shards is a label folder, another
    folder is searched (its *.safetensors and its sub-folders of label shards)."""
    checkpoints, folders = [], []
    for path in paths:
        if not path.exists():
            raise DplError(f"{path}: no such file or folder")
        if path.is_file():
            artifacts.read_header(path, kind="checkpoint")     # named one by one: it must be a checkpoint
            checkpoints.append(path)
        elif any(path.glob("shard-*.safetensors")):
            folders += [path] if _is_label_folder(path) else []
        else:
            for file in sorted(path.glob("*.safetensors"), key=_natural):
                if _is_checkpoint(file):
                    checkpoints.append(file)
            folders += sorted((d for d in path.iterdir() if d.is_dir() and _is_label_folder(d)), key=_natural)
    return list(dict.fromkeys(checkpoints)), list(dict.fromkeys(folders))


def _is_checkpoint(file: Path) -> bool:
    """A classifier's checkpoint, which the report measures; other artifacts found in a folder are skipped, said."""
    try:
        meta = artifacts.read_header(file).meta
    except DplError as e:
        common.say(f"dpl: skipped {e}")
        return False
    kind, task = meta["dpl.kind"], meta.get("task", "classifier")
    if kind != "checkpoint":
        common.say(f"dpl: skipped {file}: a dpl {kind!r} artifact, not a checkpoint")
    elif task != "classifier":
        from ..core.tasks import TASKS

        title = TASKS[task].title if task in TASKS else f"a {task} model"
        common.say(f"dpl: skipped {file}: {title}, which the report does not measure")
    return kind == "checkpoint" and task == "classifier"


def _is_label_folder(path: Path) -> bool:
    """A folder of class label shards, which the report measures; pseudo-boxes and pseudo-keypoints are skipped,
    said."""
    if not any(path.glob("shard-*.safetensors")):
        return False
    from ..core.tasks import LABELS, of_folder

    task = of_folder(path)
    if task.name != LABELS:
        common.say(f"dpl: skipped {path}: {task.title}, which the report does not measure")
    return task.name == LABELS


def _natural(path: Path):
    """model2 before model10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def model_of(path: Path, rt: train.Runtime) -> report.Model:
    meta = artifacts.read_header(path, kind="checkpoint").meta
    history = records.history_of(path) if meta.get("history") else None      # a malformed history is refused
    return report.Model(path=path, result=measuring.measure_checkpoint(path, rt), classes=meta.get("classes") or [],
                        command=meta.get("command"), history=history)


def last_model(models: list[report.Model]) -> report.Model | None:
    """The model at the end of the pipeline: the one no other descends from (of several, the one with the
    longest lineage, then the last named)."""
    if not models:
        return None
    chains = {id(m): records.lineage_of(m.path) for m in models}
    ancestors = {Path(c["path"]).resolve() for chain in chains.values() for c in chain[:-1]}
    leaves = [m for m in models if m.path.resolve() not in ancestors] or models
    return max(reversed(leaves), key=lambda m: len(chains[id(m)]))


def label_folder_of(folder: Path) -> report.LabelFolder:
    labels, truth, ds = measuring.label_truth(folder)
    known = bool((truth >= 0).any())
    teachers = labels.meta.get("teachers") or []
    return report.LabelFolder(
        path=folder, teacher=Path(teachers[0]["path"]).name if teachers else None,
        data=f"{ds.spec} ({ds.part})", predicted=labels.label, confidence=labels.confidence,
        truth=truth if known else None, classes=labels.meta.get("classes") or [],
        quality=evaluate.label_quality(labels.label, labels.confidence, truth) if known else None)
