"""A detector's paths of teach, label, distill and eval, and a box label folder's of eval: the handlers of the
task table (cli/tasks/__init__.py) for tasks detector (data with boxes, `scenes:SOURCE` or `coco:PATH`, or a
detector checkpoint) and box-labels (core/methods/detect.py)."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.table import Table

from .. import common
from ...core import DplError, artifacts, tasks
from ...core.data import augment, boxes, scenes
from ...core.engine import distributed, train
from ...core.methods import detect
from ...core.data.boxes import precision_recall, read_box_labels

def _noise(o: dict) -> detect.BoxNoise:
    scale = o.get("scale_jitter")
    lo_hi = None
    if scale:
        try:
            lo_hi = tuple(float(v) for v in scale.split(","))
        except ValueError:
            lo_hi = ()
        if len(lo_hi) != 2:
            raise DplError(f"--scale-jitter takes LO,HI (e.g. 0.8,1.2), got {scale!r}")
    return detect.BoxNoise(flip=o["flip"], scale=lo_hi, photometric=augment.parse_randaugment(o["randaugment"]))


def _test_of(data: scenes.BoxData, spec: scenes.SceneSpec | None, resize: int | None, download: bool):
    """The test split of the training data's source, measured once trained (None when there is none)."""
    if data.record.get("split") == "test":
        return None
    kind, where, _ = scenes.parse_box_spec(data.spec)
    try:
        return scenes.load_boxes(f"{kind}:{where}", "test", spec, resize=resize or data.images.shape[-1],
                                 download=download)
    except DplError:
        return None


def _say_data(data: scenes.BoxData, role: str = "") -> None:
    common.say(f"dpl: {role}{data.spec} ({data.record.get('part', 'all')}): {len(data):,} images at "
               f"{'x'.join(map(str, data.shape))}, {len(data.truth.boxes):,} boxes of {len(data.classes)} classes")
    for note in data.notes:
        common.say(f"dpl: {note}")


def _record_scene(o: dict) -> scenes.SceneSpec | None:
    return common.scene_spec(o["ctx"], o["data_spec"], o)


# ---- teach ------------------------------------------------------------------------------------------------

def teach(ctx: typer.Context, o: dict) -> None:
    """dpl teach on data with boxes: a detector (--arch FAMILY-BACKBONE) on the labeled part (--labeled N images)."""
    scene = _record_scene(o)
    state = common.resume_spec("teach", o, o["resume"], o["save_every"])
    cfg, model_opts, noise = common.train_config(o), common.model_options(o, tasks.DETECTOR, "teach"), _noise(o)
    val_opts = common.val_options(o, detect.VAL.metric)
    common.check_output(o["output"], o["force"], o)
    sinks = common.run_records(o["output"], o["tensorboard"])
    rt = train.runtime(o["device"], o["compile"], workers=o["workers"])
    full = scenes.load_boxes(o["data_spec"], "train", scene, resize=o["resize"], download=o["download"])
    data = detect.part_of(full, o["labeled"], o["split_seed"], o["part"] or ("labeled" if o["labeled"] else "all"))
    data, val = data.held_out(o["val"], o["split_seed"])
    test = _test_of(full, scene, o["resize"], o["download"])
    _say_data(data)
    with common.TrainingProgress("teach detector", sinks) as progress:
        result = detect.teach(data, test, model_opts, noise, cfg, rt, on_progress=progress, resume=state, val=val,
                              val_opts=val_opts)
    common.write_result(o["output"], result, state, o["keep_state"])


# ---- data of a detector's artifact ------------------------------------------------------------------------

def data_of(record: dict, data_spec: str | None, resize: int | None, download: bool, split: str = "train"
            ) -> scenes.BoxData:
    """The data an artifact was made from (its spec, scene spec and size), or `data_spec` at its size; `split`
    where the spec names none. Not partitioned (see `part_of`)."""
    spec = data_spec or record.get("spec")
    if spec is None or not scenes.is_box_spec(spec):
        raise DplError(f"{spec}: a detector works on data with boxes (scenes:SOURCE or coco:PATH)")
    kind, where, given = scenes.parse_box_spec(spec)
    made_kind, made_where, _ = scenes.parse_box_spec(record["spec"]) if scenes.is_box_spec(record.get("spec", "")) \
        else (None, None, None)
    same = (kind, where) == (made_kind, made_where)
    scene = scenes.scene_spec_of(record) if same else None
    if data_spec is None:
        spec = f"{kind}:{where}:{split}"
    return scenes.load_boxes(spec, split, scene, resize=resize or record.get("resize") or record.get("image_size", [None])[0],
                             download=download)


def _split_of(record: dict, data: scenes.BoxData) -> tuple[int | None, int]:
    """The --labeled split an artifact was made with; it belongs to its own data, not to other data given."""
    if scenes.parse_box_spec(record["spec"])[:2] != scenes.parse_box_spec(data.spec)[:2]:
        return None, 0
    return record.get("labeled_images"), record.get("split_seed", 0)


# ---- label --------------------------------------------------------------------------------------------------

def label(ctx: typer.Context, o: dict) -> None:
    """dpl label with a detector: pseudo-boxes of the unlabeled part (of the teacher's --labeled split; else of all
    its training images) into box shards, with precision/recall against the ground truth."""
    if len(o["teacher"]) > 1:
        raise DplError(f"{o['teacher'][0]}: a detector labels alone; several teachers cannot apply")
    path = o["teacher"][0]
    rank, world = distributed.shard_of(o["shard"])
    folder = Path(o["output"])
    if folder.exists() and not folder.is_dir():
        raise DplError(f"{folder} is a file, not a folder for box shards")
    # Alone, the folder is this run's; one of N jobs (--shard, torchrun) owns its rank's shards only.
    pattern = "shard-*.safetensors" if world == 1 else f"shard-{rank:05d}-*.safetensors"
    stale = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if stale and not (o["force"] or o["resume"]):
        raise DplError(f"{folder} exists with shards; pass --force to replace them or --resume to complete them")
    if o["resume"]:
        stale = []          # kept where they match this run, overwritten where they do not
    artifacts.check_writable(folder)
    model, ckpt = detect.load_detector(path)
    record = ckpt.meta["data"]
    full = data_of(record, o["data_spec"], o["resize"], o["download"], split=record.get("split", "train"))
    labeled, seed = (o["labeled"], o["split_seed"]) if o["labeled"] else _split_of(record, full)
    part = o["part"] or ("unlabeled" if labeled else "all")
    pool = detect.part_of(full, labeled, seed, part)
    detect.check_images(ckpt.meta, pool.images, path, pool.spec)
    detect.check_classes(ckpt.meta, pool.classes, path)
    _say_data(pool, "labels ")
    rt = train.runtime(o["device"], workers=o["workers"])
    meta = {"teachers": [{"role": "teacher", "path": str(path), "sha256": ckpt.sha256()}], "data": pool.record,
            "classes": pool.classes, "num_classes": len(pool.classes), "image_size": list(pool.shape[1:]),
            "total": len(pool), "world": world}
    for f in stale:
        f.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    model = rt.prepare(model)
    with common.TrainingProgress("label boxes") as progress:
        found, index = detect.label_boxes(model, ckpt.meta, pool.images, torch.arange(len(pool)), folder, meta, rt,
                                          rank, world, o["shard_size"], min(o["batch_size"], 256), progress,
                                          resume=o["resume"])
    quality = precision_recall(found, pool.truth.subset(index)) if len(pool.truth.boxes) else None
    if o["as_json"]:
        return common.print_json({"path": str(folder), "images": len(index), "boxes": len(found.boxes),
                                  "rank": rank, "world": world, "quality": quality})
    print(folder)
    if quality is not None and (rank == 0 or o["shard"] is not None):
        common.stderr.print(common.box_quality_table(quality, f"pseudo-boxes of {pool.spec} ({part}, {len(index)} images, "
                                                   f"{len(found.boxes)} boxes)"))


# ---- distill ------------------------------------------------------------------------------------------------

# Chen et al.'s terms, which only a live --teacher has; stored pseudo-boxes (--labels) have none of them.
ONLINE_ONLY = ("alpha", "tau", "feature_loss", "feature_weight", "bound_weight", "bound_margin", "background_weight")


def distill(ctx: typer.Context, o: dict) -> None:
    """dpl distill for detectors: offline from pseudo-boxes (--labels BOXES/: the true boxes of the labeled part plus
    pseudo-boxes above --min-confidence for the rest), or online from a live detector (--teacher: Chen et al.)."""
    labels_dir, teachers = o["labels_dir"] or [], o["teacher"] or []
    if len(labels_dir) > 1 or len(teachers) > 1 or (labels_dir and teachers):
        raise DplError("a detector distils from one box label folder (--labels) or one live detector (--teacher)")
    _refuse_the_other_way(o, offline=bool(labels_dir))
    if o["feature_loss"] not in (None, "hint"):
        raise DplError(f"--feature-loss {o['feature_loss']} compares classifiers' layers; a detector takes hint "
                       "(its backbone features through an adaptation layer)")
    pseudo_opts = detect.PseudoOptions(ratio=o["unlabeled_ratio"], weight=o["unlabeled_weight"])
    state = common.resume_spec("distill", o, o["resume"], o["save_every"])
    cfg, model_opts, noise = common.train_config(o), common.model_options(o, tasks.DETECTOR, "distill"), _noise(o)
    val_opts = common.val_options(o, detect.VAL.metric)
    common.check_output(o["output"], o["force"], o)
    run = (state, cfg, model_opts, noise, val_opts)
    if labels_dir:
        result = _from_pseudo_boxes(o, labels_dir[0], pseudo_opts, *run)
    else:
        result = _from_teacher(o, teachers[0], *run)
    common.write_result(o["output"], result, state, o["keep_state"])


def _refuse_the_other_way(o: dict, offline: bool) -> None:
    """Offline distillation (--labels) and online (--teacher) each refuse the other's options."""
    if offline and o["labeled"] is not None:
        raise DplError("--labeled cannot apply to --labels: the labeled part is the one the pseudo-boxes' teacher "
                       "was taught on (its label folder records the split)")
    if not offline and o["min_confidence"] is not None:
        raise DplError("--min-confidence selects stored pseudo-boxes (--labels); a live --teacher has none")
    if not offline and (o["unlabeled_ratio"] is not None or o["unlabeled_weight"] is not None):
        raise DplError("--unlabeled-ratio and --unlabeled-weight weigh stored pseudo-boxes (--labels); a live "
                       "--teacher has none")
    if offline and any(o[k] is not None for k in ONLINE_ONLY):
        raise DplError("--alpha, --tau, --feature-loss, --bound-weight, --bound-margin and --background-weight are "
                       "Chen et al.'s terms of a live --teacher; --labels trains on stored pseudo-boxes")


def _from_pseudo_boxes(o: dict, folder: Path, pseudo_opts: detect.PseudoOptions, state, cfg, model_opts, noise,
                       val_opts):
    """The offline student: the true boxes of the labeled part, the pseudo-boxes of the rest."""
    labels = read_box_labels(folder)
    if pseudo_opts.ratio is not None and labels.meta["data"].get("part") != "unlabeled":
        raise DplError(f"--unlabeled-ratio mixes labeled and pseudo-labeled images, and {labels.path} labels no "
                       "teacher's unlabeled part: this run has only pseudo-labeled ones")
    sinks = common.run_records(o["output"], o["tensorboard"])
    rt = train.runtime(o["device"], o["compile"], workers=o["workers"])
    record = labels.meta["data"]
    full = data_of(record, o["data_spec"], o["resize"], o["download"], split=record.get("split", "train"))
    labeled_n, seed = _split_of(record, full)
    pool = detect.part_of(full, labeled_n, seed, record.get("part", "all"))
    labeled = detect.part_of(full, labeled_n, seed, "labeled") if record.get("part") == "unlabeled" else None
    if labeled is None and o["val"] is not None:
        raise DplError(f"--val holds out labeled images, and {labels.path} labels no teacher's unlabeled part: "
                       "this run has no labeled ones")
    labeled, val = labeled.held_out(o["val"], seed) if labeled is not None else (None, None)
    min_confidence = 0.5 if o["min_confidence"] is None else o["min_confidence"]
    data, pseudo = detect.with_pseudo_boxes(labeled, pool, labels, min_confidence)
    common.say(f"dpl: distills on {pseudo['labeled_images']} labeled images and {pseudo['images_kept']} of "
               f"{pseudo['pool_images']} pseudo-labeled images ({pseudo['boxes_kept']} of {pseudo['boxes_stored']} "
               f"pseudo-boxes score at least {pseudo['min_confidence']:g})")
    test = _test_of(full, scenes.scene_spec_of(record), o["resize"], o["download"])
    parents = [{"role": "labels", "path": str(labels.path), "sha256": labels.sha256}]
    with common.TrainingProgress("distill detector", sinks) as progress:
        return detect.distill_pseudo(data, pseudo["labeled_images"], test, model_opts, noise, pseudo_opts, cfg, rt,
                                     on_progress=progress, resume=state, parents=parents, val=val, val_opts=val_opts,
                                     detect={"distill": "pseudo-boxes", **pseudo, **pseudo_opts.record()})


def _from_teacher(o: dict, path: Path, state, cfg, model_opts, noise, val_opts):
    """Chen et al.'s student of a live teacher detector, on the ground-truth boxes of the labeled part."""
    opts = detect.ChenOptions(
        soft_weight=1.0 if o["alpha"] is None else o["alpha"], tau=o["tau"] or 1.0,
        bound_weight=0.5 if o["bound_weight"] is None else o["bound_weight"],
        margin=0.0 if o["bound_margin"] is None else o["bound_margin"],
        background_weight=1.5 if o["background_weight"] is None else o["background_weight"],
        hint_weight=(1.0 if o["feature_weight"] is None else o["feature_weight"]) if o["feature_loss"] else 0.0,
        rpn_weight=1.0 if o["alpha"] is None else o["alpha"])
    sinks = common.run_records(o["output"], o["tensorboard"])
    rt = train.runtime(o["device"], o["compile"], workers=o["workers"])
    t_meta = artifacts.load_checkpoint(path, task=detect.TASK).meta
    record = t_meta["data"]
    full = data_of(record, o["data_spec"], o["resize"], o["download"], split=record.get("split", "train"))
    labeled_n, seed = (o["labeled"], o["split_seed"]) if o["labeled"] else _split_of(record, full)
    data = detect.part_of(full, labeled_n, seed, "labeled" if labeled_n else "all")
    data, val = data.held_out(o["val"], seed)
    test = _test_of(full, scenes.scene_spec_of(full.record), o["resize"], o["download"])
    _say_data(data)
    with common.TrainingProgress("distill detector (Chen et al.)", sinks) as progress:
        return detect.distill_online(data, test, path, model_opts, noise, opts, cfg, rt, on_progress=progress,
                                     resume=state, val=val, val_opts=val_opts)


# ---- eval ---------------------------------------------------------------------------------------------------

MAP_METRICS = ("map", "map50", "map75")


def evaluate(ctx: typer.Context, o: dict) -> None:
    """dpl eval of detectors: COCO mAP@[.5:.95], mAP@0.5, mAP@0.75 and per-class AP (pycocotools) on the test split
    of their data (or --data), and detection speed in images/s (batched, inference_mode); --seeds groups repeated
    runs as for classifiers, mean ± std of the three mAPs."""
    rt = train.runtime(o["device"], workers=o["workers"])
    results, commands = [], []
    for path in o["checkpoints"]:
        model, ckpt = detect.load_detector(path)
        commands.append(ckpt.meta.get("command"))
        data = data_of(ckpt.meta["data"], o["data_spec"], o["resize"], o["download"], split="test")
        detect.check_images(ckpt.meta, data.images, path, data.spec)
        detect.check_classes(ckpt.meta, data.classes, path)
        found = detect.measure(rt.prepare(model), data.images, data.truth, data.classes, ckpt.input, rt,
                               min(o["batch_size"], 256))
        results.append({"checkpoint": str(path), "task": detect.TASK, "data": data.spec, "arch": ckpt.arch["name"],
                        "params": sum(v.numel() for v in ckpt.model_state().values()), "seed": ckpt.meta.get("seed"),
                        **found})
    common.flush_notes()
    if common.seeds_or_json(o, results, commands, MAP_METRICS, "COCO box AP"):
        return
    table = Table(title=f"on {results[0]['data']} ({results[0]['n']} images): COCO box AP (pycocotools)")
    for col in ("model", "arch", "params", "mAP@[.5:.95]", "mAP@.5", "mAP@.75", "images/s"):
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")
    for r in results:
        table.add_row(r["checkpoint"], r["arch"], f"{r['params']:,}", f"{r['map']:.4f}", f"{r['map50']:.4f}",
                      f"{r['map75']:.4f}", f"{r['images_per_s']:.1f}")
    common.stderr.print(table)
    if len(results) == 1:
        per = Table(title="per class")
        for col in ("class", "AP@[.5:.95]", "AP@.5"):
            per.add_column(col, justify="left" if col == "class" else "right")
        for name, ap in results[0]["per_class"].items():
            per.add_row(name, f"{ap:.4f}", f"{results[0]['per_class50'][name]:.4f}")
        common.stderr.print(per)


def box_label_quality(ctx: typer.Context, o: dict) -> None:
    """dpl eval of a box label folder (pseudo-boxes of dpl label, from a WSDDN model or a detector) against the
    truth of the images it was made for, rebuilt from its metadata: precision/recall at IoU 0.5 per score
    threshold, CorLoc, and mAP with the pseudo-boxes as detections (core.data.boxes.pseudo_box_quality)."""
    folder, as_json = o["checkpoints"][0], o["as_json"]
    labels = boxes.read_box_labels(folder)
    record = labels.meta["data"]
    split = scenes.parse_box_spec(record["spec"])[2] if scenes.is_box_spec(str(record.get("spec", ""))) else None
    full = data_of(record, None, None, o["download"], split=split or record.get("split", "train"))
    made = detect.part_of(full, record.get("labeled_images"), record.get("split_seed", 0), record.get("part", "all"))
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
