"""dpl plot: figures of runs, checkpoints and label folders, written as STEM.png and STEM.svg."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from . import common
from ..core import DplError, catalog

artifacts, records, train = common.artifacts, common.records, common.train
figures, mil = common.lazy("dpl.core.reporting.figures"), common.lazy("dpl.core.methods.mil")
measuring = common.lazy("dpl.cli.measure")
keypoints, keypoint_tasks = common.lazy("dpl.core.methods.keypoints"), common.lazy("dpl.cli.tasks.keypoints")
augment, torch = common.augment, common.lazy("torch")

MAX_PLOTTED_POSES = 32      # images in one `plot keypoints` grid

plot_app = typer.Typer(
    name="plot",
    help="Figures (PNG, SVG) of runs, checkpoints, label folders, MIL bags and keypoints.\n\n"
         "Each KIND writes STEM.png and STEM.svg (-o STEM) and prints their paths; --json prints "
         "{\"files\": [...], \"data\": {...}}, the numbers plotted.",
    no_args_is_help=True,
    subcommand_metavar="KIND [ARGS]...",
    context_settings={"help_option_names": ["-h", "--help"]},
)

Stem = Annotated[Path, typer.Option("--output", "-o", help="Output stem: writes STEM.png and STEM.svg (a .png or .svg suffix is dropped).", rich_help_panel=common.Panel.OUTPUT)]
Checkpoint = Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="A checkpoint.")]
MeasureData = Annotated[str | None, typer.Option("--data", help="Data to measure on, as dpl eval --data. \\[default: the test split of the checkpoint's own data source]", rich_help_panel=common.Panel.DATA)]


def output_stem(stem: Path, force: bool) -> Path:
    """The stem, once both of its files (STEM.png, STEM.svg) may be written (checked before any work)."""
    for path in figures.files_of(stem):
        common.check_output(path, force)
    return stem


def finish(fig, data: dict, stem: Path, as_json: bool) -> None:
    """Write the figure; stdout gets the two paths, or with --json the paths and the plotted numbers."""
    common.flush_notes()
    paths = [str(p) for p in figures.save(fig, stem)]
    if as_json:
        common.print_json({"files": paths, "data": data})
    else:
        print("\n".join(paths))


def checkpoint_file(path: Path, or_log: bool = False) -> Path:
    """A checkpoint (or a metrics log) that exists; a folder is refused with what to give instead."""
    if path.is_dir():
        raise DplError(f"{path}: a folder, not a checkpoint" + (" or a .metrics.jsonl log" if or_log else
                       " (plot a label folder with dpl plot labels)"))
    if not path.exists():
        raise DplError(f"{path}: no such file")
    return path


def run_names(paths: list[Path]) -> list[str]:
    """Legend names: the file stems (t0.safetensors, t0.metrics.jsonl -> t0), the paths where stems repeat."""
    stems = [p.name.removesuffix(".safetensors").removesuffix(records.LOG_SUFFIX) for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


@plot_app.command("curves")
@common.guarded
def curves_command(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN...", help="Checkpoints or .metrics.jsonl logs of training runs, overlaid.")],
    output: Stem,
    force: common.Force = False,
    as_json: common.Json = False,
):
    """Training curves of runs overlaid, by epoch.

    Panels: the loss, each loss term, the learning rate, and accuracy (train solid, validation dashed)."""
    stem = output_stem(output, force)
    histories = {name: records.history_of(checkpoint_file(path, or_log=True))
                 for name, path in zip(run_names(runs), runs)}
    if not figures.curve_keys(histories):
        raise DplError(f"{', '.join(map(str, runs))}: no training metric to plot ({', '.join(figures.CURVE_FIELDS)})")
    finish(*figures.curves(histories), stem, as_json)


@plot_app.command("reliability")
@common.guarded
def reliability_command(
    checkpoint: Checkpoint,
    output: Stem,
    data_spec: MeasureData = None,
    device: common.Device = "auto",
    force: common.Force = False,
    as_json: common.Json = False,
):
    """Reliability diagram of a checkpoint, ECE in the title.

    Accuracy per confidence bin against the diagonal, the gap shaded, the confidence histogram below: the 15
    bins of dpl eval --json."""
    stem = output_stem(output, force)
    result = measuring.measure_checkpoint(checkpoint_file(checkpoint), train.runtime(device), data_spec)
    finish(*figures.reliability(result["reliability"]["bins"], result["ece"], f"{checkpoint.name} on {result['data']}"),
           stem, as_json)


@plot_app.command("confusion")
@common.guarded
def confusion_command(
    checkpoint: Checkpoint,
    output: Stem,
    data_spec: MeasureData = None,
    device: common.Device = "auto",
    force: common.Force = False,
    as_json: common.Json = False,
):
    """Confusion matrix of a checkpoint, rows normalized.

    Row = true class, normalized to sum 1; numbers in the cells up to 20 classes."""
    stem = output_stem(output, force)
    result = measuring.measure_checkpoint(checkpoint_file(checkpoint), train.runtime(device), data_spec)
    classes = artifacts.read_header(checkpoint, kind="checkpoint").meta.get("classes") or []
    title = f"{checkpoint.name} on {result['data']}: top-1 {result['top1']:.4f}"
    finish(*figures.confusion(result["confusion"], classes, title), stem, as_json)


@plot_app.command("labels")
@common.guarded
def labels_command(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="A label folder (dpl label's output).")],
    output: Stem,
    download: common.Download = False,
    allow_partial: common.AllowPartial = False,
    force: common.Force = False,
    as_json: common.Json = False,
):
    """Pseudo-label confidence per class, and accuracy/coverage by threshold.

    The confidence histogram per predicted class and, where the data has ground truth, the accuracy and
    coverage of the labels kept at confidence >= t for t in 0..1 (101 steps)."""
    stem = output_stem(output, force)
    labels, truth, ds = measuring.label_truth(folder, download, allow_partial)
    fig, data = figures.label_confidence(labels.confidence, labels.label, labels.meta.get("classes") or [], truth)
    if data.get("skipped"):
        sys.stderr.write(f"dpl: skipped the accuracy/coverage curve: {folder} labels {ds.spec}, "
                         "which has no ground truth\n")
    finish(fig, data, stem, as_json)


@plot_app.command("lineage")
@common.guarded
def lineage_command(
    checkpoint: Checkpoint,
    output: Stem,
    force: common.Force = False,
    as_json: common.Json = False,
):
    """Noisy Student iterations: test top-1 by generation.

    Each model from the first teacher to CHECKPOINT, with the test top-1 recorded in its metadata (nothing is
    recomputed)."""
    stem = output_stem(output, force)
    finish(*figures.lineage(records.lineage_of(checkpoint_file(checkpoint))), stem, as_json)


@plot_app.command("probe")
@common.guarded
def probe_command(
    checkpoint: Checkpoint,
    output: Stem,
    layer: Annotated[list[str] | None, typer.Option(help="Probe this layer (module path; repeatable; dpl info --layers lists them), average-pooled to at most 2048 values. The final feature vector is always probed.", rich_help_panel=common.Panel.MEASURES)] = None,
    data_spec: MeasureData = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    download: common.Download = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Inference batch size.", rich_help_panel=common.Panel.RUN)] = 512,
    device: common.Device = "auto",
    force: common.Force = False,
    as_json: common.Json = False,
):
    """Linear-probe top-1 per layer of frozen features.

    Measured as dpl eval --linear-probe --layer does: fit on the training split, top-1 on the evaluated
    data."""
    stem = output_stem(output, force)
    ckpt = artifacts.load_checkpoint(checkpoint_file(checkpoint))
    options = measuring.MeasureOptions(data_spec=data_spec, labeled_per_class=labeled_per_class, labeled=labeled,
                                       split_seed=split_seed, download=download, batch_size=batch_size,
                                       linear_probe=True, layer=tuple(layer or ()))
    result, dims, fit_on = measuring.measure(checkpoint, ckpt, options, train.runtime(device))
    title = f"{checkpoint.name}: fit on {fit_on}, top-1 on {result['data']}"
    finish(*figures.probe(result["linear_probe"], dims, title), stem, as_json)


@plot_app.command("bag")
@common.guarded
def bag_command(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="A MIL checkpoint (dpl mil).")],
    output: Stem,
    bag: Annotated[list[int], typer.Option("--bag", help=f"Draw this bag: its position in the bags measured, "
                                           f"0-based, as in dpl eval --json's per_bag (repeatable, at most "
                                           f"{catalog.MAX_PLOTTED_BAGS}).", show_default=False, rich_help_panel=common.Panel.BAGS)],
    data_spec: Annotated[str | None, typer.Option("--data", help="Bags to draw from, as dpl eval --data. \\[default: the checkpoint's test bags]", rich_help_panel=common.Panel.DATA)] = None,
    download: common.Download = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Inference batch size (instances).", rich_help_panel=common.Panel.RUN)] = 512,
    device: common.Device = "auto",
    force: common.Force = False,
    as_json: common.Json = False,
):
    """A MIL model's bags with the weight of each instance.

    Each bag's instances in a row, under each its attention weight (instance probability for max and mean
    pooling), the target-class instances in red where the hidden instance labels are known; the bag label and
    the predicted bag probability above. --json gives each bag as dpl eval --json does."""
    stem = output_stem(output, force)
    found = mil.plotted_bags(checkpoint_file(checkpoint), bag, data_spec, train.runtime(device), batch_size, download)
    title = f"{checkpoint.name} on {found['data']}"
    finish(*figures.bag_weights(found["bags"], found["pooling"], title, found["target"]), stem, as_json)


@plot_app.command("keypoints")
@common.guarded
def keypoints_command(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="A keypoint checkpoint (dpl teach --data poses).")],
    output: Stem,
    data_spec: Annotated[str | None, typer.Option("--data", help="Images to draw from, a poses spec as dpl eval --data. \\[default: the test split of the checkpoint's own poses]", rich_help_panel=common.Panel.DATA)] = None,
    count: Annotated[int, typer.Option("--count", min=1, max=MAX_PLOTTED_POSES, help="Images drawn, at most the data's (all of them when it has fewer).", rich_help_panel=common.Panel.DATA)] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the choice of images (shown in data order).", rich_help_panel=common.Panel.DATA)] = 0,
    flip_test: common.FlipTest = False,
    device: common.Device = "auto",
    force: common.Force = False,
    as_json: common.Json = False,
):
    """A keypoint model's predictions on test images, against the truth.

    A grid of --count images of the checkpoint's test split (or --data), chosen by --seed: the true keypoints
    as hollow circles (those outside the image, visibility 0, left out), the predicted ones filled and joined by
    the skeleton, coloured by part (body, hands, face); each image titled with its PCK@0.1. --json gives each
    image's position in the data, predicted coordinates (pixels, pixel i spanning [i, i + 1)), confidence and
    PCK@0.1."""
    stem = output_stem(output, force)
    if checkpoint.is_dir():
        raise DplError(f"{checkpoint}: a folder, not a keypoint checkpoint")
    found = _plotted_poses(checkpoint_file(checkpoint), data_spec, count, seed, flip_test, train.runtime(device))
    finish(*figures.keypoint_grid(**found), stem, as_json)


def _plotted_poses(path: Path, data_spec: str | None, count: int, seed: int, flip_test: bool, rt) -> dict:
    """`keypoint_grid`'s arguments: `count` images of a keypoint checkpoint's test split (or `data_spec`'s), drawn
    by a permutation seeded `seed` and kept in data order, with the model's keypoints and each one's PCK@0.1."""
    model, ckpt = keypoints.load_model(path)
    data = keypoint_tasks.data_of(ckpt.meta, data_spec, "test")
    keypoints.check_data(ckpt.meta, data, path)
    if count > len(data):
        common.say(f"dpl: --count {count}: {data.spec} has {len(data)} images; drawing all of them")
    rng = torch.Generator().manual_seed(seed % 2 ** 64)         # any integer: torch seeds take 64 bits
    chosen = torch.randperm(len(data), generator=rng)[:count].sort().values
    shown = data.subset(chosen)
    x = augment.to_input(shown.images.to(rt.device), ckpt.input["mean"], ckpt.input["std"])
    coords, confidence = keypoints.predict(rt.prepare(model), x, len(shown),
                                           flip_pairs=shown.flip_pairs if flip_test else None)
    pck = [keypoints.pck(coords[i: i + 1], shown.keypoints[i: i + 1], shown.boxes[i: i + 1])["all"][0.1]
           for i in range(len(shown))]
    return {"images": shown.images, "truth": shown.keypoints, "coords": coords, "confidence": confidence, "pck": pck,
            "skeleton": shown.skeleton, "parts": shown.parts, "names": shown.names, "indices": chosen.tolist(),
            "title": f"{path.name} on {data.spec}: {len(shown)} of {len(data)} images"
                     + (", flip test" if flip_test else "")}
