"""dpl label, distill and eval on clips (task `video-pose`): a keypoint teacher labels every frame, a student
distils the teacher's pose and its motion (video pose distillation), and any model with per-frame features is
measured by few-shot action recognition (core/reporting/video.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import typer
from rich.table import Table
from rich.text import Text

from .. import common
from ...core import DplError, artifacts, models, tasks
from ...core.data import augment
from ...core.data.clips import ClipSet, load_clips
from ...core.engine import train
from ...core.methods import keypoints, video_pose
from ...core.reporting import video

DEFAULT_SHOTS = (1, 5)


def _clips(o: dict, spec: str, split: str, made=None) -> ClipSet:
    clips = load_clips(spec, split, made if made is not None else common.clip_spec(o))
    for note in clips.notes:
        common.say(f"dpl: {note}")
    return clips


def _frames(clips: ClipSet) -> int:
    """The frames every clip has: the shortest clip's length, said when clips are longer."""
    frames = int(clips.lengths.min())
    if frames < int(clips.lengths.max()):
        common.say(f"dpl: {clips.spec}: clips of {frames} to {int(clips.lengths.max())} frames; their first "
                   f"{frames} are read")
    return frames


def label(ctx: typer.Context, o: dict) -> None:
    """dpl label on clips: a keypoint teacher's pseudo-keypoints of every frame of every clip, into a keypoint
    label folder whose samples are clip * T + t."""
    if len(o["teacher"]) != 1:
        raise DplError("clips are labeled by one keypoint teacher")
    path = o["teacher"][0]
    if tasks.of_checkpoint(path).name != tasks.KEYPOINTS:
        raise DplError(f"{path}: {tasks.of_checkpoint(path).title}; dpl label on clips takes a keypoint teacher "
                       f"(dpl teach --data poses)")
    model, ckpt = keypoints.load_model(path)
    clips = _clips(o, o["data_spec"], "train")
    video_pose.check_teacher(ckpt.meta, clips, path)
    frames = _frames(clips)
    folder = Path(o["output"])
    common.check_output(folder, o["force"], o, folder=True)
    artifacts.check_writable(folder)
    common.say(f"dpl: labels {clips.spec}: {len(clips):,} clips of {frames} frames at "
               f"{'x'.join(map(str, clips.shape))}")
    rt = train.runtime(o["device"], workers=o["workers"])
    model = rt.prepare(model)
    batch = min(o["batch_size"], 256)
    run = lambda x: keypoints.run_model(model, ckpt.meta, x, rt, batch, o["flip_test"])   # noqa: E731
    with common.TrainingProgress("label clips") as progress:
        made = video_pose.label_clips(run, clips, frames, on_progress=progress)
    index, coords, confidence = made["index"], made["coords"], made["confidence"]
    k_set = ckpt.meta["keypoints"]
    meta = {"teachers": [{"role": "whole", "path": str(path), "sha256": ckpt.sha256()}],
            "data": {**clips.record, "frames": frames}, **{k: k_set[k] for k in keypoints.SET_KEYS},
            "image_size": list(clips.shape[1:]), "total": len(index), "world": 1, "flip_test": o["flip_test"]}
    folder.parent.mkdir(parents=True, exist_ok=True)
    artifacts.replace_folder(folder, lambda tmp: keypoints.write_labels(tmp, meta, index, coords, confidence,
                                                                        o["shard_size"]))
    common.flush_notes()
    found = {"frames": len(index), "mean_confidence": float(confidence.mean())}
    if "keypoints" in made:
        found["pck"] = keypoints.pck(coords, made["keypoints"], made["boxes"])["all"][0.1]
    if o["as_json"]:
        return common.print_json({"path": str(folder), **found})
    print(folder)
    common.stderr.print(Text(f"pseudo-keypoints of {clips.spec}: {found['frames']:,} frames, mean confidence "
                             f"{found['mean_confidence']:.3f}" + (f", PCK@0.1 {found['pck']:.4f} against the "
                                                                 f"figures' keypoints" if "pck" in found else "")))


def _clips_of_record(record: dict) -> ClipSet:
    """The clips a data record (a label folder's or a checkpoint's) was made of."""
    from ...core.data.clip_figures import ClipSpec

    made = record.get("clips")
    try:
        spec = ClipSpec(**made) if isinstance(made, dict) else None
    except (TypeError, ValueError) as e:
        raise DplError(f"corrupt metadata value for 'data.clips' ({e})") from None
    return load_clips(str(record.get("spec")), str(record.get("split") or "train"), spec)


def distill(ctx: typer.Context, o: dict) -> None:
    """dpl distill from a clip label folder: the video pose student (frame and frame difference in; the teacher's
    normalised pose and, with --motion-weight > 0, its motion out)."""
    folders = o["labels_dir"] or []
    if len(folders) != 1 or o["teacher"]:
        raise DplError("a video pose student distils from one keypoint label folder of clips (--labels)")
    labels = keypoints.read_labels(folders[0])
    record = labels.meta["data"]
    clips = _clips_of_record(record)
    frames = int(record.get("frames", 0))
    if labels.meta["total"] != len(clips) * frames:
        raise DplError(f"{labels.path}: labels of {labels.meta['total']:,} frames, and {clips.spec} has "
                       f"{len(clips):,} clips of {frames} frames: the labels were made for other clips")
    if record.get("fingerprint") != clips.record.get("fingerprint"):
        raise DplError(f"{labels.path}: labels made for other clips than {clips.spec} (fingerprints differ)")
    state = common.resume_spec("distill", o, o["resume"], o["save_every"])
    cfg = common.train_config(o)
    min_confidence = 0.3 if o["min_confidence"] is None else o["min_confidence"]
    opts = video_pose.VideoPoseOptions(motion_weight=o["motion_weight"], min_confidence=min_confidence)
    common.check_output(o["output"], o["force"], o)
    common.say(f"dpl: distills pose{' and motion' if opts.motion_weight else ''} from {labels.path}: "
               f"{len(clips):,} clips of {frames} frames of {clips.spec}")
    sinks = common.run_records(o["output"], o["tensorboard"])
    rt = train.runtime(o["device"], o["compile"], workers=o["workers"])
    parents = [{"role": "labels", "path": str(labels.path), "sha256": labels.sha256}]
    with common.TrainingProgress("distill video pose", sinks) as progress:
        result = video_pose.distill(clips, frames, labels.coords, labels.confidence, o["arch"], opts, cfg, rt,
                                    parents, labels.meta["teachers"], on_progress=progress, resume=state)
    common.write_result(o["output"], result, state, o["keep_state"])


# ---- few-shot action recognition -----------------------------------------------------------------

def _embeddings(path: Path, rt: train.Runtime, clips: ClipSet) -> list[tuple[str, object, artifacts.Checkpoint]]:
    """[(what the features are, embed(frames, previous) -> (n, D), checkpoint)] of a checkpoint of any task with
    per-frame features: a video pose student's feature vector; a keypoint model's normalised pose and its backbone's
    feature vector (a backbone supervised on poses); a landmark model's landmarks; a classifier's (or pretrained
    backbone's) feature vector."""
    task = tasks.of_checkpoint(path).name
    if task == tasks.VIDEO_POSE:
        net, ckpt = video_pose.load_student(path)
        _check_input(path, {**ckpt.input, "channels": ckpt.input["channels"] // 2}, clips)
        return [("student features", video_pose.student_embed(net, ckpt.input, rt), ckpt)]
    if task == tasks.KEYPOINTS:
        net, ckpt = keypoints.load_model(path)
        _check_input(path, ckpt.input, clips)
        model = rt.prepare(net).eval()

        def pose(x, _previous):
            coords, confidence = keypoints.run_model(model, ckpt.meta, x, rt, 256)
            return video.normalised_pose(coords, confidence >= .3).flatten(1)
        return [("teacher keypoints", pose, ckpt),
                ("teacher backbone", _backbone_features(model.backbone, ckpt.input, rt), ckpt)]
    if task == tasks.LANDMARKS:
        from ...core.methods import landmarks

        net, ckpt = landmarks.load_landmarks(path)
        _check_input(path, ckpt.input, clips)
        net = net.to(rt.device).eval()
        return [("landmarks", lambda x, _p: landmarks.landmark_points(net, x.to(rt.device)).flatten(1), ckpt)]
    if task not in (tasks.CLASSIFIER, tasks.EXPERTS):
        raise DplError(f"{path}: {tasks.TASKS[task].title} has no per-frame features to measure on clips")
    ckpt = artifacts.load_checkpoint(path)
    _check_input(path, ckpt.input, clips)
    model = rt.prepare(models.build(ckpt.arch))
    artifacts.load_state(model, ckpt.model_state(), path)
    return [("backbone features", _backbone_features(model.eval(), ckpt.input, rt), ckpt)]


def _backbone_features(model, input_meta: dict, rt: train.Runtime):
    """embed(frames, previous): a registry model's feature vector (the classifier's input) of each frame."""
    def features(x, _previous):
        with models.Taps(model, [models.FEATURES], stop=True) as taps:
            return taps.tensor(augment.to_input(x.to(rt.device), input_meta["mean"], input_meta["std"]),
                               models.FEATURES)
    return features


def _check_input(path: Path, input_meta: dict, clips: ClipSet) -> None:
    expected = (input_meta["channels"], input_meta["size"], input_meta["size"])
    if tuple(clips.shape) != expected:
        raise DplError(f"{path}: the model takes {'x'.join(map(str, expected))} images, and {clips.spec} has frames "
                       f"of {'x'.join(map(str, clips.shape))}")


def _recorded_spec(path: Path) -> str:
    """The clips a checkpoint was trained on, without their split; refused for a model of other data."""
    record = artifacts.read_header(path, kind="checkpoint").meta.get("data") or {}
    spec = str(record.get("spec", ""))
    if tasks.of_data(spec).name != tasks.VIDEO_POSE:
        raise DplError(f"{path}: trained on {spec or 'other data'}, not clips: give the clips to measure on with "
                       f"--data")
    head, _, last = spec.rpartition(":")
    return head if head and last in ("train", "test", "val") else spec


def _support_spec(spec: str) -> str:
    """The train split of a clip spec (the labeled clips few-shot episodes draw from)."""
    head, _, last = spec.rpartition(":")
    return f"{head}:train" if last in ("train", "test", "val") and head else f"{spec}:train"


def evaluate(ctx: typer.Context, o: dict) -> None:
    """dpl eval on clips: few-shot action recognition (--few-shot K, repeatable) of each checkpoint's per-frame
    features, pooled over time, with labeled clips drawn from the train split and measured on --data."""
    spec = o["data_spec"] or _recorded_spec(o["checkpoints"][0])
    query_clips = _clips(o, spec if spec.rpartition(":")[2] in ("train", "test", "val") else f"{spec}:test", "test")
    support_clips = _clips(o, _support_spec(spec), "train")
    frames = min(_frames(query_clips), _frames(support_clips))
    shots = sorted(set(o["few_shot"] or DEFAULT_SHOTS))
    rt = train.runtime(o["device"], workers=o["workers"])
    embeddings = [(path, *found) for path in o["checkpoints"] for found in _embeddings(path, rt, query_clips)]
    support, query = video.clip_frames(support_clips, frames), video.clip_frames(query_clips, frames)
    results = []
    for path, kind, embed, ckpt in embeddings:
        s_feat, q_feat = video.frame_features(embed, support), video.frame_features(embed, query)
        row = {"checkpoint": str(path), "features": kind, "width": int(s_feat.shape[-1]), "data": query_clips.spec,
               "clips": len(query_clips), "frames": frames, "arch": ckpt.arch.get("name"),
               "seed": ckpt.meta.get("seed")}
        for k in shots:
            found = video.few_shot(s_feat, support_clips.labels, q_feat, query_clips.labels, k, o["episodes"])
            row[f"shot{k}"], row[f"shot{k}_std"] = found["accuracy"], found["std"]
        results.append(row)
    common.flush_notes()
    if o["as_json"]:
        return common.print_json(results if len(results) > 1 else results[0])
    table = Table(title=Text(f"few-shot action recognition on {query_clips.spec} ({len(query_clips)} clips of "
                             f"{frames} frames, {len(query_clips.classes)} actions; {o['episodes']} episodes, labeled "
                             f"clips from {support_clips.spec})"))
    for col in ("model", "features", "width", *(f"{k}-shot" for k in shots)):
        table.add_column(col, justify="left" if col in ("model", "features") else "right")
    for r in results:
        table.add_row(Text(r["checkpoint"]), r["features"], str(r["width"]),
                      *(f"{r[f'shot{k}']:.4f} ± {r[f'shot{k}_std']:.4f}" for k in shots))
    common.stderr.print(table)
