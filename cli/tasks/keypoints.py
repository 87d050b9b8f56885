"""dpl teach, label, distill and eval of keypoint models (task `keypoints`) and eval of keypoint label folders:
synthetic figures (poses[:SOURCE]) through the heatmap network of core/methods/keypoints; part experts (--pose-part)
and their composition into whole-body pseudo-keypoints (DOPE); online distillation (DWPose's two stages)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import typer
from rich.table import Table

from .. import common
from ...core import DplError, artifacts, tasks
from ...core.data import coco_keypoints, poses
from ...core.data.partition import part_of_images
from ...core.engine import train
from ...core.methods import keypoints

PCK_METRICS = ("pck", "pck05", "ap")


def _say_data(data: poses.PoseData, role: str = "") -> None:
    common.say(f"dpl: {role}{data.spec}: {len(data):,} images at {'x'.join(map(str, data.shape))}, "
               f"{len(data.names)} keypoints ({', '.join(f'{p} {len(i)}' for p, i in data.parts.items())})")
    for note in data.notes:
        common.say(f"dpl: {note}")


def _noise(o: dict) -> keypoints.PoseNoise:
    return keypoints.PoseNoise(flip=o["flip"])


def _load(spec: str, split: str, made: poses.PoseSpec | None, size: int | None) -> poses.PoseData:
    """Data with keypoints: figures drawn by `made` (its source the spec's), or COCO keypoints cropped to `size`
    (default 64); `split` where the spec names none."""
    if coco_keypoints.is_coco_keypoints_spec(spec):
        path, given = coco_keypoints.parse_coco_keypoints_spec(spec)
        return coco_keypoints.read_coco_keypoints(path, given or split, size or 64)
    source, given = poses.parse_pose_spec(spec)
    return poses.build_poses(replace(made, source=source) if made else poses.PoseSpec(source=source), given or split)


def _test_of(data: poses.PoseData) -> poses.PoseData | None:
    """The test split of training data, cut as the data's part expert sees it; None for data that is a test split
    already, or COCO keypoints without a test split."""
    if data.record.get("split") != "train":
        return None
    spec = str(data.record["spec"]).rsplit(":", 1)[0]
    try:
        test = _load(spec, "test", poses.pose_spec_of(data.record), data.shape[-1])
    except DplError:
        if coco_keypoints.is_coco_keypoints_spec(spec):
            return None
        raise
    return _as_part(test, data.record)


def _as_part(data: poses.PoseData, record: dict) -> poses.PoseData:
    """`data` as the part expert of `record` (its `pose_part`) sees it, crops around the true keypoints."""
    made = record.get("pose_part") or {}
    return keypoints.part_data(data, made.get("part", "whole"), made.get("size", 32))


def teach(ctx: typer.Context, o: dict) -> None:
    """dpl teach on poses: a keypoint model (heatmaps on the --arch backbone), or a part expert (--pose-part), on
    the labeled part (--labeled N images); PCK and OKS AP on the test split."""
    if coco_keypoints.is_coco_keypoints_spec(o["data_spec"]):
        spec, drawn = None, common.given(ctx, *common.POSE_OPTIONS)
        if drawn:
            raise DplError(f"{o['data_spec']}: COCO keypoints are annotated people, not drawn figures; "
                           f"{', '.join(drawn)} cannot apply")
    else:
        spec = common.pose_spec(o, poses.parse_pose_spec(o["data_spec"])[0])
        if o["resize"] is not None:
            raise DplError("--resize sets the side of COCO keypoint crops; figures are drawn at --canvas")
    state = common.resume_spec("teach", o, o["resume"], o["save_every"])
    cfg = common.train_config(o)
    model_opts = common.model_options({**o, "dropout": 0.0}, tasks.KEYPOINTS, "teach")
    val_opts = common.val_options(o, keypoints.VAL.metric)
    if o["pose_part"] not in keypoints.POSE_PARTS:
        raise DplError(f"--pose-part must be one of {', '.join(keypoints.POSE_PARTS)}, got {o['pose_part']!r}")
    common.check_output(o["output"], o["force"], o)
    sinks = common.run_records(o["output"], o["tensorboard"])
    rt = train.runtime(o["device"], o["compile"], workers=o["workers"])
    full = _load(o["data_spec"], "train", spec, o["resize"])
    data = part_of_images(full, o["labeled"], o["split_seed"], o["part"] or ("labeled" if o["labeled"] else "all"))
    data, val = data.held_out(o["val"], o["pose_seed"])
    part, size = o["pose_part"], o["part_size"]
    data = keypoints.part_data(data, part, size, jitter=True, seed=o["pose_seed"])
    val = keypoints.part_data(val, part, size) if val is not None else None
    test = _test_of(data)
    _say_data(data, "training on ")
    with common.TrainingProgress("teach keypoints", sinks) as progress:
        result = keypoints.teach(data, test, model_opts, _noise(o), cfg, rt, on_progress=progress, resume=state,
                                 val=val, val_opts=val_opts)
    common.write_result(o["output"], result, state, o["keep_state"])


def data_of(meta: dict, data_spec: str | None, split: str) -> poses.PoseData:
    """The data a checkpoint is measured on: its own data's `split` rebuilt from the record, or `data_spec` (data
    with keypoints; figures drawn with the recorded figure spec), at the checkpoint's input size, cut as its part
    expert sees it."""
    record = meta.get("data", {})
    spec = data_spec or str(record.get("spec", "poses"))
    if not (poses.is_pose_spec(spec) or coco_keypoints.is_coco_keypoints_spec(spec)):
        raise DplError(f"--data {spec}: {tasks.DATA_KINDS[tasks.CLASSIFIER]}, not "
                       f"{tasks.DATA_KINDS[tasks.KEYPOINTS]}")
    if data_spec is None:
        spec = spec.rsplit(":", 1)[0] if spec.rsplit(":", 1)[-1] in ("train", "test") else spec
        spec = f"{spec}:{split}"
    size = (meta.get("input") or {}).get("size")
    return _as_part(_load(spec, split, poses.pose_spec_of(record), size), record)


def _whole_data(record: dict, data_spec: str | None, size: int) -> poses.PoseData:
    """The whole figures (every keypoint, whole images of side `size`) of a model's data record, or of
    `data_spec`, in the split the record names."""
    return data_of({"data": {**record, "pose_part": None}, "input": {"size": size}}, data_spec,
                   record.get("split", "train"))


# ---- label --------------------------------------------------------------------------------------------------

def label(ctx: typer.Context, o: dict) -> None:
    """dpl label with a keypoint model, or with part experts (DOPE: a body expert placing hand and face crops):
    pseudo-keypoints (coordinates, confidence) of the unlabeled part of the teacher's --labeled split (else of all
    its training images) into keypoint shards, with their quality against the true keypoints."""
    folder = Path(o["output"])
    loaded = [(path, *keypoints.load_model(path)) for path in o["teacher"]]
    experts = [(path, ckpt.meta) for path, _, ckpt in loaded]
    lead = next((m for _, m in experts if keypoints.expert_part(m) not in keypoints.PART_CROPS), experts[0][1])
    record = lead["data"]
    full = _whole_data(record, o["data_spec"], lead["input"]["size"])
    labeled, seed = (o["labeled"], o["split_seed"]) if o["labeled"] else (
        (record.get("labeled_images"), record.get("split_seed", 0)) if o["data_spec"] is None else (None, 0))
    part = o["part"] or ("unlabeled" if labeled else "all")
    pool = part_of_images(full, labeled, seed, part)
    if len(loaded) == 1 and keypoints.expert_part(lead) == "whole":
        keypoints.check_data(lead, pool, o["teacher"][0])
    else:
        keypoints.check_experts(experts, pool.names)
    if (lead["input"]["channels"], lead["input"]["size"]) != pool.shape[:2]:
        raise DplError(f"{next(p for p, m in experts if m is lead)}: the model takes {lead['input']['channels']}x{lead['input']['size']} images, "
                       f"{pool.spec} has {'x'.join(map(str, pool.shape))}")
    common.check_output(folder, o["force"], o, folder=True)
    artifacts.check_writable(folder)
    _say_data(pool, "labels ")
    rt = train.runtime(o["device"], workers=o["workers"])
    models = [(rt.prepare(model), ckpt.meta) for _, model, ckpt in loaded]
    coords, confidence = keypoints.label_experts(models, pool.images, pool.names, rt, min(o["batch_size"], 256),
                                                 o["flip_test"])
    meta = {"teachers": [{"role": keypoints.expert_part(ckpt.meta), "path": str(path), "sha256": ckpt.sha256()}
                         for path, _, ckpt in loaded],
            "data": pool.record, **{k: getattr(pool, k) for k in keypoints.SET_KEYS},
            "image_size": list(pool.shape[1:]), "total": len(pool), "world": 1, "flip_test": o["flip_test"]}
    folder.parent.mkdir(parents=True, exist_ok=True)
    artifacts.replace_folder(folder, lambda tmp: keypoints.write_labels(tmp, meta, torch.arange(len(pool)), coords,
                                                                        confidence, o["shard_size"]))
    found = keypoints.quality(coords, confidence, pool)
    if o["as_json"]:
        return common.print_json({"path": str(folder), "images": len(pool), "quality": found})
    print(folder)
    _quality_table(found, f"pseudo-keypoints of {pool.spec} ({part}, {len(pool)} images)")


def _quality_table(found: dict, title: str) -> None:
    parts = [k.removeprefix("pck_") for k in found if k.startswith("pck_")]
    common.stderr.print(f"{title}: PCK@0.1 {found['pck']:.4f} (" + ", ".join(f"{p} {found[f'pck_{p}']:.4f}"
                        for p in parts) + f"), PCK@0.05 {found['pck05']:.4f}, OKS AP {found['ap']:.4f}")
    table = Table(title="kept by confidence")
    for col in ("min confidence", "keypoints kept", "PCK@0.1 of kept"):
        table.add_column(col, justify="right")
    for row in found["by_confidence"]:
        table.add_row(f"{row['min_confidence']:g}", f"{row['kept']:.3f}", "-" if row['pck_kept'] is None else f"{row['pck_kept']:.4f}")
    common.stderr.print(table)


def label_quality(ctx: typer.Context, o: dict) -> None:
    """dpl eval of a keypoint label folder: its pseudo-keypoints against the true keypoints of the images it was
    made for, rebuilt from its metadata."""
    folder = o["checkpoints"][0]
    labels = keypoints.read_labels(folder)
    made = _pool_of(labels)
    found = keypoints.quality(labels.coords, labels.confidence, made)
    if o["as_json"]:
        return common.print_json({"labels": str(folder), "data": made.spec, **found})
    _quality_table(found, f"{folder} on {made.spec} ({made.record.get('part', 'all')}, {len(made)} images)")


def _pool_of(labels: keypoints.KeypointLabels) -> poses.PoseData:
    """The images a label folder was made for, rebuilt from its metadata and checked to be the same."""
    record = labels.meta["data"]
    full = _whole_data(record, None, labels.meta["image_size"][-1])
    made = part_of_images(full, record.get("labeled_images"), record.get("split_seed", 0), record.get("part", "all"))
    if len(made) != len(labels) or made.record.get("fingerprint") != record.get("fingerprint"):
        raise DplError(f"{labels.path}: its images ({record.get('spec')}, {len(labels)}) are not those rebuilt from "
                       f"its metadata ({made.spec}, {len(made)}): the data has changed")
    return made


# ---- distill ------------------------------------------------------------------------------------------------

def distill(ctx: typer.Context, o: dict) -> None:
    """dpl distill of a keypoint model: offline from pseudo-keypoints (--labels: the true keypoints of the labeled
    part plus the pseudo-keypoints of at least --min-confidence), or online from a live keypoint teacher (--teacher:
    its heatmaps and, with --feature-loss hint, its feature map; DWPose)."""
    folders, teachers = o["labels_dir"] or [], o["teacher"] or []
    if len(folders) + len(teachers) != 1:
        raise DplError("a keypoint model distils from one keypoint label folder (--labels) or one live keypoint "
                       "teacher (--teacher)")
    online = bool(teachers)
    if online and o["min_confidence"] is not None:
        raise DplError("--min-confidence selects stored pseudo-keypoints (--labels); a live --teacher has none")
    if not online and (o["alpha"] is not None or o["feature_loss"] or o["kd_decay"]):
        raise DplError("--alpha, --feature-loss and --kd-decay weigh a live --teacher's terms; --labels trains on "
                       "stored pseudo-keypoints")
    if o["feature_loss"] not in (None, "hint"):
        raise DplError(f"--feature-loss {o['feature_loss']} compares classifiers' layers; a keypoint model takes "
                       "hint (its feature map through a 1x1 projection, DWPose's)")
    if o["head_only"] and o["init"] is None:
        raise DplError("--head-only trains the head of a trained keypoint model: give it with --init")
    state = common.resume_spec("distill", o, o["resume"], o["save_every"])
    cfg = common.train_config(o)
    model_opts = common.model_options({**o, "dropout": 0.0}, tasks.KEYPOINTS, "distill")
    val_opts = common.val_options(o, keypoints.VAL.metric)
    common.check_output(o["output"], o["force"], o)
    run = (state, cfg, model_opts, val_opts)
    result = _from_teacher(o, teachers[0], *run) if online else _from_labels(o, folders[0], *run)
    common.write_result(o["output"], result, state, o["keep_state"])


def _from_labels(o: dict, folder: Path, state, cfg, model_opts, val_opts):
    """The offline student: the true keypoints of the labeled part, the confident pseudo-keypoints of the rest."""
    if o["labeled"] is not None:
        raise DplError("--labeled cannot apply to --labels: the labeled part is the one its teacher was taught on "
                       "(the label folder records the split)")
    if o["head_only"]:
        raise DplError("--head-only is DWPose's second stage, from a live --teacher; --labels trains a whole student")
    labels = keypoints.read_labels(folder)
    pool = _pool_of(labels)
    record = labels.meta["data"]
    labeled = None
    if record.get("part") == "unlabeled":
        full = _whole_data(record, None, labels.meta["image_size"][-1])
        labeled = part_of_images(full, record["labeled_images"], record.get("split_seed", 0), "labeled")
    if labeled is None and o["val"] is not None:
        raise DplError(f"--val holds out labeled images, and {labels.path} labels no teacher's unlabeled part: "
                       "this run has no labeled ones")
    labeled, val = labeled.held_out(o["val"], cfg.seed) if labeled is not None else (None, None)
    min_confidence = 0.5 if o["min_confidence"] is None else o["min_confidence"]
    data, summary = keypoints.with_pseudo(labeled, pool, labels, min_confidence)
    common.say(f"dpl: distills on {summary['labeled_images']} labeled images and {summary['pool_images']} "
               f"pseudo-labeled ones ({summary['keypoints_kept']} of {summary['keypoints_stored']} pseudo-keypoints "
               f"score at least {min_confidence:g})")
    sinks = common.run_records(o["output"], o["tensorboard"])
    rt = train.runtime(o["device"], o["compile"], workers=o["workers"])
    parents = [{"role": "labels", "path": str(labels.path), "sha256": labels.sha256}]
    with common.TrainingProgress("distill keypoints", sinks) as progress:
        return keypoints.teach(data, _test_of(data), model_opts, _noise(o), cfg, rt, on_progress=progress,
                               resume=state, val=val, val_opts=val_opts, parents=parents,
                               section={"distill": "pseudo-keypoints", **summary})


def _from_teacher(o: dict, path: Path, state, cfg, model_opts, val_opts):
    """DWPose's student of a live teacher: true keypoints of the labeled part, the teacher's outputs on all."""
    t_meta = artifacts.load_checkpoint(path, task=tasks.KEYPOINTS).meta
    record = t_meta["data"]
    full = data_of(t_meta, o["data_spec"], record.get("split", "train"))
    labeled_n, seed = (o["labeled"], o["split_seed"]) if o["labeled"] else (
        (record.get("labeled_images"), record.get("split_seed", 0)) if o["data_spec"] is None else (None, 0))
    data = part_of_images(full, labeled_n, seed, "labeled" if labeled_n else "all")
    data, val = data.held_out(o["val"], seed)
    if labeled_n:
        data = keypoints.concat(data, keypoints.without_truth(part_of_images(full, labeled_n, seed, "unlabeled")),
                                "labeled+unlabeled")
    opts = keypoints.PoseKD(heatmap_weight=1.0 if o["alpha"] is None else o["alpha"],
                            feature_weight=(1.0 if o["feature_weight"] is None else o["feature_weight"])
                            if o["feature_loss"] else 0.0, decay=o["kd_decay"], head_only=o["head_only"])
    _say_data(data, "distills on ")
    sinks = common.run_records(o["output"], o["tensorboard"])
    rt = train.runtime(o["device"], o["compile"], workers=o["workers"])
    with common.TrainingProgress("distill keypoints (DWPose)", sinks) as progress:
        return keypoints.distill_online(data, _test_of(data), path, model_opts, _noise(o), opts, cfg, rt,
                                        on_progress=progress, resume=state, val=val, val_opts=val_opts)


def evaluate(ctx: typer.Context, o: dict) -> None:
    """dpl eval of keypoint models: PCK@0.1 and @0.05 over all keypoints and per part (body, hands, face), COCO
    keypoint AP by OKS (pycocotools, the data's sigmas) and images/s, on the test split of their data (or --data);
    --seeds groups repeated runs."""
    rt = train.runtime(o["device"], workers=o["workers"])
    results, commands = [], []
    for path in o["checkpoints"]:
        model, ckpt = keypoints.load_model(path)
        commands.append(ckpt.meta.get("command"))
        data = data_of(ckpt.meta, o["data_spec"], "test")
        keypoints.check_data(ckpt.meta, data, path)
        found = keypoints.measure(rt.prepare(model), data, ckpt.input, rt, min(o["batch_size"], 256), o["flip_test"])
        results.append({"checkpoint": str(path), "task": tasks.KEYPOINTS, "data": data.spec, "n": len(data),
                        "arch": ckpt.arch["name"], "params": sum(v.numel() for v in ckpt.model_state().values()),
                        "seed": ckpt.meta.get("seed"), **found})
    common.flush_notes()
    if common.seeds_or_json(o, results, commands, PCK_METRICS, "PCK and OKS AP"):
        return
    parts = list(dict.fromkeys(k.removeprefix("pck_") for r in results for k in r if k.startswith("pck_")))
    part = lambda r, p: f"{r[f'pck_{p}']:.4f} ({r[f'pck05_{p}']:.4f})" if f"pck_{p}" in r else "-"   # noqa: E731
    table = Table(title=f"on {results[0]['data']} ({results[0]['n']} images): PCK@0.1 (@0.05) by part, OKS AP")
    for col in ("model", "arch", "params", "PCK", *parts, "AP", "AP@.5", "images/s"):
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")
    for r in results:
        table.add_row(r["checkpoint"], r["arch"], f"{r['params']:,}", f"{r['pck']:.4f} ({r['pck05']:.4f})",
                      *(part(r, p) for p in parts), f"{r['ap']:.4f}",
                      f"{r['ap50']:.4f}", f"{r['images_per_s']:.1f}")
    common.stderr.print(table)
