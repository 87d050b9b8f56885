"""dpl teach and dpl eval of keypoint models (task `keypoints`): synthetic figures (poses[:SOURCE]) through the
heatmap network of core/methods/keypoints."""

from __future__ import annotations

from dataclasses import replace

import typer
from rich.table import Table

from .. import common
from ...core import DplError, tasks
from ...core.data import poses
from ...core.engine import train
from ...core.methods import keypoints

PCK_METRICS = ("pck", "pck05", "ap")


def _pose_spec(o: dict) -> poses.PoseSpec:
    source, _ = poses.parse_pose_spec(o["data_spec"])
    scale = common.float_list(o["pose_scale"], "--pose-scale")
    if len(scale) != 2:
        raise DplError(f"--pose-scale takes LO,HI, got {o['pose_scale']!r}")
    return poses.PoseSpec(source=source, canvas=o["canvas"], count=o["poses"], test_count=o["test_poses"],
                          scale=scale, rotation=o["pose_rotation"], clutter=o["clutter"], truncation=o["truncation"],
                          seed=o["pose_seed"])


def _say_data(data: poses.PoseData, role: str = "") -> None:
    common.say(f"dpl: {role}{data.spec}: {len(data):,} images at {'x'.join(map(str, data.shape))}, "
               f"{len(data.names)} keypoints ({', '.join(f'{p} {len(i)}' for p, i in data.parts.items())})")
    for note in data.notes:
        common.say(f"dpl: {note}")


def teach(ctx: typer.Context, o: dict) -> None:
    """dpl teach on poses: a keypoint model (heatmaps on the --arch backbone), PCK and OKS AP on the test split."""
    spec = _pose_spec(o)
    state = common.resume_spec("teach", o, o["resume"], o["save_every"])
    cfg = common.train_config(o)
    model_opts = common.model_options({**o, "dropout": 0.0}, tasks.KEYPOINTS, "teach")
    noise = keypoints.PoseNoise(flip=o["flip"])
    val_opts = common.val_options(o, keypoints.VAL.metric)
    common.check_output(o["output"], o["force"], o)
    sinks = common.run_records(o["output"], o["tensorboard"])
    rt = train.runtime(o["device"], o["compile"], workers=o["workers"])
    full = poses.build_poses(spec, poses.parse_pose_spec(o["data_spec"])[1] or "train")
    data, val = full.held_out(o["val"], spec.seed)
    test = poses.build_poses(spec, "test") if full.record["split"] == "train" else None
    _say_data(data, "training on ")
    with common.TrainingProgress("teach keypoints", sinks) as progress:
        result = keypoints.teach(data, test, model_opts, noise, cfg, rt, on_progress=progress, resume=state,
                                 val=val, val_opts=val_opts)
    common.write_result(o["output"], result, state, o["keep_state"])


def data_of(meta: dict, data_spec: str | None, split: str) -> poses.PoseData:
    """The poses a checkpoint is measured on: its own data's `split` rebuilt from the record, or `data_spec`
    with the recorded figure spec (a poses: spec) at the checkpoint's canvas."""
    record = meta.get("data", {})
    made = poses.pose_spec_of(record)
    spec = data_spec or str(record.get("spec", "poses"))
    if not poses.is_pose_spec(spec):
        raise DplError(f"--data {spec}: {tasks.DATA_KINDS[tasks.CLASSIFIER]}, not "
                       f"{tasks.DATA_KINDS[tasks.KEYPOINTS]}")
    source, given = poses.parse_pose_spec(spec)
    if data_spec is None:
        given = split
    pose = replace(made, source=source) if made else poses.PoseSpec(source=source)
    return poses.build_poses(pose, given or split)


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
        found = keypoints.measure(rt.prepare(model), data, ckpt.input, rt, min(o["batch_size"], 256))
        results.append({"checkpoint": str(path), "task": tasks.KEYPOINTS, "data": data.spec, "n": len(data),
                        "arch": ckpt.arch["name"], "params": sum(v.numel() for v in ckpt.model_state().values()),
                        "seed": ckpt.meta.get("seed"), **found})
    common.flush_notes()
    if common.seeds_or_json(o, results, commands, PCK_METRICS, "PCK and OKS AP"):
        return
    parts = [k.removeprefix("pck_") for k in results[0] if k.startswith("pck_")]
    table = Table(title=f"on {results[0]['data']} ({results[0]['n']} images): PCK@0.1 (@0.05) by part, OKS AP")
    for col in ("model", "arch", "params", "PCK", *parts, "AP", "AP@.5", "images/s"):
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")
    for r in results:
        table.add_row(r["checkpoint"], r["arch"], f"{r['params']:,}", f"{r['pck']:.4f} ({r['pck05']:.4f})",
                      *(f"{r[f'pck_{p}']:.4f} ({r[f'pck05_{p}']:.4f})" for p in parts), f"{r['ap']:.4f}",
                      f"{r['ap50']:.4f}", f"{r['images_per_s']:.1f}")
    common.stderr.print(table)
