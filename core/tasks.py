"""The tasks dpl serves, as one table: what each is called in refusals, which artifacts and data are its own,
which options apply to it, and which validation metric `--keep best` maximizes.

A command finds the task of what it was given (`of_data`, `of_checkpoint`, `of_folder`), refuses the options
that do not apply to it (`refused`, the same wording from every command), and hands the rest to the task's code
(cli/tasks.py holds the table of that code). Adding a task is a row here, its option rows, and its handlers
there. Importing this module imports no torch: the CLI reads it before it knows it will train anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import DplError, catalog


@dataclass(frozen=True)
class Task:
    name: str           # the `task` a checkpoint records ("classifier": none recorded)
    title: str          # how a refusal names it: "a detector"
    best: str = ""      # the validation metric `--keep best` maximizes (a key of the `val_` records); "": none
    # command -> the only options (parameter names) that command takes for this task; the commands not listed
    # take COMMON and every option that OPTIONS does not reserve for other tasks
    only: dict[str, frozenset[str]] = field(default_factory=dict)
    why: str = ""       # said after a refusal where the title alone does not say why


# What every command takes whatever the task (unless a task's `only` says otherwise): how to run and print.
COMMON = frozenset({"output", "config", "device", "workers", "force", "as_json", "download", "batch_size"})
_MEASURE = frozenset({"checkpoints", "data_spec", "config", "device", "workers", "as_json", "download", "batch_size"})

CLASSIFIER, EXPERTS, DETECTOR, MIL, WSDDN, KEYPOINTS = "classifier", "experts", "detector", "mil", "wsddn", "keypoints"
VIDEO_POSE, LANDMARKS = "video-pose", "landmarks"
LABELS, BOX_LABELS, KEYPOINT_LABELS = "labels", "box-labels", "keypoint-labels"
# what training a keypoint model takes, whatever the command
_POSE_TRAINING = COMMON | {"arch", "epochs", "lr", "optimizer", "momentum", "weight_decay", "warmup_epochs", "log_every",
                           "ema", "tensorboard", "val", "val_every", "keep", "flip", "stochastic_depth", "seed",
                           "compile", "resume", "save_every", "keep_state", "init"}

# the options that shape synthetic clips (cli/common.CLIP_OPTIONS); what training a video pose student takes
_CLIPS = frozenset({"canvas", "clip_count", "test_clips", "frames", "clip_seed"})
_VIDEO_TRAINING = COMMON | {"arch", "epochs", "lr", "optimizer", "momentum", "weight_decay", "warmup_epochs",
                            "log_every", "ema", "tensorboard", "seed", "compile", "resume", "save_every", "keep_state"}

TASKS: dict[str, Task] = {t.name: t for t in (
    Task(CLASSIFIER, "a classifier", best="top1"),
    Task(EXPERTS, "a multi-head student (several --labels)", best="top1"),
    Task(DETECTOR, "a detector", best="map",
         only={"eval": _MEASURE | {"resize", "seeds"}}),
    Task(MIL, "a multiple-instance (MIL) model", best="bag_auc", only={"eval": _MEASURE}),
    Task(WSDDN, "a WSDDN model", best="corloc",
         only={"eval": _MEASURE,
               "label": COMMON | {"teacher", "data_spec", "shard_size", "present"}}),
    Task(KEYPOINTS, "a keypoint model", best="pck",
         only={"teach": _POSE_TRAINING | {"data_spec", "canvas", "poses", "test_poses", "pose_scale",
                                          "pose_rotation", "clutter", "truncation", "pose_seed", "pose_part",
                                          "part_size", "labeled", "split_seed", "part", "resize"},
               "distill": _POSE_TRAINING | {"labels_dir", "teacher", "min_confidence", "alpha", "feature_loss",
                                            "feature_weight", "kd_decay", "head_only", "labeled", "split_seed"},
               "label": COMMON | {"teacher", "data_spec", "shard_size", "labeled", "split_seed", "part", "flip_test"},
               "eval": _MEASURE | {"seeds", "flip_test"}}),
    # clips: a keypoint teacher labels their frames, a student distils pose and motion from them, and every model
    # with per-frame features is measured on them by few-shot action recognition
    Task(VIDEO_POSE, "a video pose student",
         only={"label": COMMON | _CLIPS | {"teacher", "data_spec", "shard_size", "flip_test"},
               "distill": _VIDEO_TRAINING | {"labels_dir", "min_confidence", "motion_weight"},
               "eval": _MEASURE | _CLIPS | {"few_shot", "episodes"}}),
    Task(LANDMARKS, "a landmark model (dpl landmarks)", only={"eval": _MEASURE | _CLIPS | {"few_shot", "episodes"}}),
    # label folders are measured by `dpl eval` as models are: rows of the same table
    Task(LABELS, "a label folder", why="it is measured on the data it was made for and has no backbone to probe; "
                                       "give a checkpoint",
         only={"eval": frozenset({"checkpoints", "download", "as_json", "allow_partial", "config"})}),
    Task(BOX_LABELS, "a box label folder", only={"eval": frozenset({"checkpoints", "download", "as_json", "config"})}),
    Task(KEYPOINT_LABELS, "a keypoint label folder", only={"eval": frozenset({"checkpoints", "as_json", "config"})}),
)}

_CLASSIFYING = frozenset({CLASSIFIER, EXPERTS})
_BOXES = frozenset({DETECTOR, WSDDN})
# Options that belong to some tasks only: (command or "*", option parameter name) -> the tasks that take it.
OPTIONS: dict[tuple[str, str], frozenset[str]] = {
    **{("*", o): _BOXES for o in ("objects", "object_size", "max_overlap", "scenes", "test_scenes",
                                  "scene_seed")},
    **{("*", o): frozenset({DETECTOR}) for o in ("scale_jitter", "bound_weight", "bound_margin", "background_weight")},
    **{("*", o): _CLASSIFYING for o in (
        "labeled_per_class", "val_per_class", "label_smoothing", "crop", "stream", "dropout",
        # distill's classifier terms and label-folder handling
        "labeled_data", "loss", "dkd_alpha", "dkd_beta", "loss_warmup_epochs", "student_layer", "teacher_layer",
        "crd_queue", "crd_dim", "crd_tau", "hard", "balance", "allow_partial",
        # eval's probes and heads
        "linear_probe", "layer", "knn", "head")},
    **{("label", o): _CLASSIFYING for o in ("ensemble", "soft", "topk", "tau")},
    # stored views (consistent-view offline KD) are labeled by one classifier or an ensemble
    **{("label", o): frozenset({CLASSIFIER}) for o in ("views", "view_seed", "crop", "flip")},
    ("predict", "topk"): _CLASSIFYING,
    # a multi-head student learns each expert's labels on every image of the pool they label
    **{("distill", o): frozenset({CLASSIFIER}) for o in ("labeled_data", "labeled_per_class", "val_per_class")},
    **{("distill", o): frozenset({CLASSIFIER, DETECTOR}) for o in ("teacher", "labeled", "val", "val_every", "keep")},
    ("distill", "head_names"): frozenset({EXPERTS}),
    ("*", "present"): frozenset({WSDDN}),
    **{("*", o): frozenset({KEYPOINTS}) for o in ("poses", "test_poses", "pose_scale", "pose_rotation", "clutter",
                                                   "truncation", "pose_seed")},
    ("*", "canvas"): _BOXES | {KEYPOINTS, VIDEO_POSE},
    **{("*", o): frozenset({VIDEO_POSE}) for o in ("clip_count", "test_clips", "frames", "clip_seed", "few_shot",
                                                    "episodes", "motion_weight")},
    **{("*", o): frozenset({KEYPOINTS}) for o in ("pose_part", "part_size", "kd_decay", "head_only",
                                                   "flip_test")},
}


def applies(command: str, task: Task, option: str) -> bool:
    """Whether `option` (a parameter name) of `command` applies to `task`."""
    if command in task.only:
        return option in task.only[command]
    if option in COMMON:
        return True
    owners = OPTIONS.get((command, option), OPTIONS.get(("*", option)))
    return owners is None or task.name in owners


def refused(command: str, task: Task, given: dict[str, str]) -> str | None:
    """The one-line refusal of the options given (parameter name -> flag as typed) that do not apply to `task`;
    None when all apply."""
    flags = [flag for name, flag in given.items() if not applies(command, task, name)]
    if not flags:
        return None
    return f"{', '.join(flags)} cannot apply to {task.title}" + (f": {task.why}" if task.why else "")


def arch_task(arch: str) -> str:
    """The task an architecture (a registry name, with or without :knobs) builds: a detector family's
    (FAMILY-BACKBONE) builds a detector; every other builds a classifier, the backbone every other task trains."""
    return DETECTOR if arch.partition(":")[0].split("-", 1)[0] in catalog.DETECTOR_FAMILIES else CLASSIFIER


def check_arch(arch: str, task: str, command: str, about: Path | str | None = None) -> None:
    """Refuse, before any work, an architecture of another task (a detector for dpl mil, a classifier where a
    detector is trained); `about`: the artifact the task was read from, named first."""
    if arch_task(arch) == (DETECTOR if task == DETECTOR else CLASSIFIER):
        return
    prefix = f"{about}: {TASKS[task].title}; " if about is not None else ""
    if task == DETECTOR:
        backbone = arch.partition(":")[0]
        raise DplError(f"{prefix}--arch {arch} is a classifier; dpl {command} on data with boxes trains a detector, "
                       f"FAMILY-BACKBONE with FAMILY one of {', '.join(catalog.DETECTOR_FAMILIES)} (e.g. "
                       f"{catalog.DETECTOR_FAMILIES[0]}-{backbone}; dpl info --archs lists them)")
    boxes = " (a detector learns from data with boxes: scenes:SOURCE or coco:PATH)" if task == CLASSIFIER else ""
    raise DplError(f"{prefix}--arch {arch} is a detector; dpl {command} trains {TASKS[task].title} and takes a "
                   f"classifier architecture{boxes}")


def of_data(spec: str | None) -> Task:
    """The task a training command serves on data `spec`: a detector on data with boxes, a keypoint model on
    data with keypoints, else a classifier."""
    if spec is not None and spec.partition(":")[0] in ("poses", "coco-keypoints"):
        return TASKS[KEYPOINTS]
    if spec is not None and spec.partition(":")[0] in CLIP_SOURCES:
        return TASKS[VIDEO_POSE]
    from .data.scenes import is_box_spec

    return TASKS[DETECTOR if spec is not None and is_box_spec(spec) else CLASSIFIER]


# what data each kind of task learns from, as refusals name it
DATA_KINDS = {CLASSIFIER: "classification data", DETECTOR: "data with boxes (scenes:SOURCE or coco:PATH)",
              KEYPOINTS: "data with keypoints (poses[:SOURCE] or coco-keypoints:PATH)",
              VIDEO_POSE: "clips (clips[:SOURCE], moving:SOURCE or clipfolder:PATH)"}
CLIP_SOURCES = ("clips", "moving", "clipfolder")      # core/data/clips.CLIP_SOURCES (a test holds them equal)


def check_data(task: Task, spec: str | None, about: Path | str | None) -> None:
    """Refuse data of another kind than an artifact's task: boxes for a detector's or a WSDDN model's, keypoints
    for a keypoint model's, classification data for a classifier's (`about`: the artifact, named first)."""
    if spec is None or task.name not in _CLASSIFYING | _BOXES | {KEYPOINTS, VIDEO_POSE}:
        return
    wants = DETECTOR if task.name in _BOXES else task.name if task.name in (KEYPOINTS, VIDEO_POSE) else CLASSIFIER
    given = of_data(spec).name
    if given != wants:
        prefix = f"{about}: " if about is not None else ""
        raise DplError(f"{prefix}{task.title}, and --data {spec} is {DATA_KINDS[given]}: give {DATA_KINDS[wants]}")


def on_data(command: str, task: Task, spec: str | None) -> Task:
    """The task serving `command` on data `spec` given an artifact of `task`: on clips, labeling with a keypoint
    teacher and measuring any model are the video pose task's; otherwise the artifact's own."""
    if spec is not None and of_data(spec).name == VIDEO_POSE and command in ("label", "eval"):
        return TASKS[VIDEO_POSE]
    return task


def of_checkpoint(path: Path) -> Task:
    """The task of a checkpoint file: the `task` it records, a multi-head student by its heads; a classifier for
    anything unreadable (its reader then says why)."""
    from . import artifacts

    try:
        meta = artifacts.read_header(Path(path), kind="checkpoint").meta if Path(path).is_file() else {}
    except DplError:
        meta = {}
    name = meta.get("task") or (EXPERTS if meta.get("heads") else CLASSIFIER)
    if name not in TASKS:
        raise DplError(f"{path}: a checkpoint of task {name!r}, which this dpl does not know")
    return TASKS[name]


def of_folder(path: Path) -> Task:
    """The task of a label folder: box labels (pseudo-boxes), keypoint labels or class labels."""
    from .artifacts import folder_kind

    return TASKS[{"boxes": BOX_LABELS, "keypoints": KEYPOINT_LABELS}.get(folder_kind(Path(path)), LABELS)]


def of_artifact(path: Path) -> Task:
    return of_folder(path) if Path(path).is_dir() else of_checkpoint(path)


def same_task(command: str, paths: list[Path]) -> Task:
    """The one task of several artifacts given together: that of the first one that is not a classifier (a
    classifier and a multi-head student go together); an artifact of another task, or one named twice, is
    refused by name."""
    seen = set()
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            raise DplError(f"{p}: named twice; give each artifact once")
        seen.add(key)
    folder = next((p for p in paths if Path(p).is_dir()), None)
    if folder is not None and len(paths) > 1:
        raise DplError(f"{folder} is a folder: a label folder is measured alone, not beside checkpoints")
    found = [(p, of_artifact(p)) for p in paths]
    task = next((t for _, t in found if t.name not in _CLASSIFYING), found[0][1])
    for path, other in found:
        if other.name != task.name and not {other.name, task.name} <= _CLASSIFYING:
            raise DplError(f"{path}: {other.title}, not {task.title}; give them to separate dpl {command} calls")
    return task
