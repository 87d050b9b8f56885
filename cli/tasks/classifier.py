"""The classifier's paths of teach, label, distill and eval (and a multi-head student's, and a label folder's in
eval): the handlers of the task table (cli/tasks/__init__.py) for tasks classifier, experts and labels."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .. import common
from ..measure import MeasureOptions, label_truth, measure_heads, model_name, run_identity
from ...core import DplError, artifacts, data, tasks
from ...core.engine import distributed, train
from ...core.methods import distill as distillation, experts, label as labeling, teach as supervised
from ...core.methods.features import FeatureOptions
from ...core.reporting import evaluate as metrics


def teach(ctx: typer.Context, o: dict) -> None:
    """dpl teach of a classifier: cross-entropy on the labeled part (all of it without a partition)."""
    resize = o["resize"]
    state = common.resume_spec("teach", o, o["resume"], o["save_every"])
    cfg, noise = common.train_config(o), common.noise_options(o)
    model_opts = common.model_options(o, tasks.CLASSIFIER, "teach")
    opts = supervised.TeachOptions(label_smoothing=o["label_smoothing"])
    val_opts, held = common.val_options(o), common.holdout(o)
    common.check_output(o["output"], o["force"], o)
    sinks = common.run_records(o["output"], o["tensorboard"])
    rt = train.runtime(o["device"], o["compile"], workers=o["workers"])
    split = common.partition(o)
    # image files are decoded at the size of the checkpoint training starts from
    if resize is None and o["init"] is not None and data.is_image_files(o["data_spec"]):
        resize = artifacts.read_header(o["init"], kind="checkpoint").meta["input"]["size"]
    ds = data.load(o["data_spec"], partition=split, part=o["part"] or ("labeled" if split.active else "all"),
                   download=o["download"], resize=resize, stream=o["stream"], check_all=True, workers=o["workers"])
    common.say_source(ds)
    ds, val_ds = data.hold_out(ds, held)
    with common.TrainingProgress("teach", sinks) as progress:
        result = supervised.teach(ds, common.test_split(ds), model_opts, noise, cfg, rt, opts, on_progress=progress,
                                  resume=state, val=val_ds, val_opts=val_opts)
    common.write_result(o["output"], result, state, o["keep_state"])


def label(ctx: typer.Context, o: dict) -> None:
    """dpl label with a classifier (an ensemble, or each head of a multi-head student): label shards of the
    unlabeled part (or the whole split), with their accuracy where the data has labels."""
    output, resume = o["output"], o["resume"]
    teachers = list(o["teacher"]) + list(o["ensemble"] or [])
    view_flags = [flag for name, flag in common.given_options(ctx).items() if name in ("view_seed", "crop", "flip")]
    if view_flags and o["views"] is None:
        raise DplError(f"{', '.join(view_flags)} shape the stored views of --views K: give --views, or drop them")
    rank, world = distributed.shard_of(o["shard"])
    first = artifacts.read_header(teachers[0], kind="checkpoint")
    heads = _heads_of(teachers, first, o["head"])
    if heads:
        artifacts.check_writable(output)
        if output.exists() and not output.is_dir():
            raise DplError(f"{output} is a file, not a folder for the heads' label folders")
        mine = [s for name in heads
                for s in common.own_shards(output / name, rank, world, o["force"], resume, check=False)]
    else:
        mine = common.own_shards(output, rank, world, o["force"], resume)
    opts = labeling.LabelOptions(mode="hard" if not o["soft"] else ("topk" if o["topk"] else "soft"), topk=o["topk"],
                                 tau=o["tau"], shard_size=o["shard_size"], batch_size=o["batch_size"],
                                 views=o["views"], view_seed=o["view_seed"],
                                 view_noise=common.noise_options({**o, "randaugment": None}))
    spec, split, size = common.data_of(first.meta, o["data_spec"], common.partition(o), o["resize"], first.path)
    ds = data.load(spec, partition=split, part=o["part"] or ("unlabeled" if split.active else "all"),
                   download=o["download"], resize=size, channels=first.meta.get("input", {}).get("channels"),
                   stream=o["stream"], workers=o["workers"])
    common.say_inherited("labels", f"the teacher {teachers[0]}", first.meta, o["data_spec"], common.partition(o),
                         o["resize"], ds)
    common.say_source(ds)
    rt = train.runtime(o["device"], workers=o["workers"])
    stale = mine if o["force"] and not resume else []
    with common.TrainingProgress("label") as progress:
        if heads:
            done = labeling.label_heads(teachers[0], heads, ds, opts, rt, output, rank, world, resume, stale, progress)
        else:
            done = labeling.label(teachers, ds, opts, rt, output, rank, world, resume, replace=stale,
                                  on_progress=progress)
    if o["as_json"]:
        common.print_json({"path": str(output), "heads": done} if heads else {"path": str(output), **done})
    elif rank == 0 or o["shard"] is not None:       # under torchrun only rank 0 speaks; --shard jobs each do
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


def _report(output: Path, done: dict, ds: data.Dataset, by: str = "") -> None:
    print(output)
    if done.get("views"):
        common.stderr.print(f"stored {done['views']} views per sample beside the un-augmented image's labels: "
                            f"{done['view_bytes_per_sample_view']:.1f} bytes per sample per view")
    if done["skipped"]:
        common.stderr.print(f"skipped {done['skipped']} unreadable image files (listed in the shards' metadata)")
    if done["quality"] is not None:
        part = f", part {done['rank']}/{done['world']}" if done["world"] > 1 else ""
        common.stderr.print(common.quality_table(done["quality"], f"pseudo-labels{by} of {ds.spec} ({ds.part}, "
                                                 f"{done['samples']} samples{part})"))


def _distill_setup(o: dict):
    """What both distill handlers build first, every option checked before any work."""
    state = common.resume_spec("distill", o, o["resume"], o["save_every"])
    cfg, noise = common.train_config(o), common.noise_options(o)
    model_opts = common.model_options(o, tasks.CLASSIFIER, "distill")
    opts = distillation.DistillOptions(
        loss=o["loss"], tau=o["tau"], alpha=o["alpha"], unlabeled_weight=o["unlabeled_weight"],
        unlabeled_ratio=o["unlabeled_ratio"], hard=o["hard"], min_confidence=o["min_confidence"], balance=o["balance"],
        dkd_alpha=o["dkd_alpha"], dkd_beta=o["dkd_beta"], loss_warmup_epochs=o["loss_warmup_epochs"])
    features = FeatureOptions(loss=o["feature_loss"], weight=o["feature_weight"],
                              student_layers=tuple(o["student_layer"] or ()),
                              teacher_layers=tuple(o["teacher_layer"] or ()), crd_queue=o["crd_queue"],
                              crd_dim=o["crd_dim"], crd_tau=o["crd_tau"])
    common.check_output(o["output"], o["force"], o)
    sinks = common.run_records(o["output"], o["tensorboard"])
    rt = train.runtime(o["device"], o["compile"], workers=o["workers"])
    features.resolved(bool(o["labels_dir"]), len(o["teacher"] or []))    # refused before any work
    return state, cfg, model_opts, noise, opts, features, sinks, rt


def distill(ctx: typer.Context, o: dict) -> None:
    """dpl distill of a classifier: stored labels, live teachers, feature terms."""
    val_opts, held = common.val_options(o), common.holdout(o)
    state, cfg, model_opts, noise, opts, features, sinks, rt = _distill_setup(o)
    labels_dir = o["labels_dir"][0] if o["labels_dir"] else None
    teachers = list(o["teacher"] or [])
    labels = artifacts.read_labels(labels_dir, o["allow_partial"]) if labels_dir is not None else None
    if labels is not None and o["tau"] is not None:
        _say_lost_to_float16(labels, o["tau"])
    source = distillation.source_meta(labels, teachers)
    spec, split, size = common.data_of(source, o["data_spec"], common.partition(o), o["resize"],
                                       labels_dir or teachers[0])
    channels = labels.meta["data"].get("channels") if labels is not None else None
    load = dict(download=o["download"], resize=size, channels=channels, stream=o["stream"], workers=o["workers"])
    separate = labels is not None and not split.active
    teacher_meta = _teacher_data(labels, spec) if separate and o["labeled_data"] is None else None
    if separate and (o["labeled_data"] or teacher_meta):
        # Noisy Student proper: the labeled source and the unlabeled pool are two sources.
        labeled_spec, labeled_split, _ = common.data_of(teacher_meta or {}, o["labeled_data"], common.partition(o),
                                                        None)
        labeled_ds = data.load(labeled_spec, partition=labeled_split, part="labeled" if labeled_split.active else "all",
                               check_all=True, **load)
        pseudo_ds = data.load(spec, **load)
        if o["labeled_data"] is None:
            common.say(f"dpl: labeled data {labeled_ds.spec} ({labeled_ds.part}), as the teacher was trained; "
                       f"pseudo-labels of {pseudo_ds.spec}")
    elif split.active:
        labeled_ds = data.load(spec, partition=split, part="labeled", check_all=True, **load)
        pseudo_ds = data.load(spec, partition=split, part="unlabeled", **load)
    elif labels is not None:
        labeled_ds, pseudo_ds = None, data.load(spec, **load)
    else:
        labeled_ds, pseudo_ds = data.load(spec, check_all=True, **load), None
    if not separate:
        common.say_inherited("distills on",
                             f"the labels {labels_dir}" if labels is not None else f"the teacher {teachers[0]}",
                             source, o["data_spec"], common.partition(o), o["resize"], pseudo_ds or labeled_ds)
    common.say_source(labeled_ds, "labeled ")
    common.say_source(pseudo_ds, "pseudo-labeled ")
    if held.active and labeled_ds is None:
        raise DplError("--val and --val-per-class hold out labeled samples, and this run has none "
                       "(give a partition, or --labeled-data)")
    labeled_ds, val_ds = data.hold_out(labeled_ds, held) if labeled_ds is not None else (None, None)
    with common.TrainingProgress("distill", sinks) as progress:
        result = distillation.distill(labeled_ds, pseudo_ds, labels, teachers, model_opts, noise, opts, cfg, rt,
                         common.test_split(labeled_ds or pseudo_ds), on_progress=progress, resume=state,
                         val=val_ds, val_opts=val_opts, features=features)
    common.write_result(o["output"], result, state, o["keep_state"])


def _say_lost_to_float16(labels: artifacts.Labels, tau: float) -> None:
    """Re-tempering stored probabilities to a higher tau raises the small ones, and those that underflowed
    float16 stay 0: say how many, and how to keep them."""
    made = labels.meta["tau"]
    stored = labels.probs if labels.mode == "soft" else None
    if stored is None or tau <= made:
        return
    lost = float((stored == 0).float().mean())
    if lost > 0:
        common.say(f"dpl: {labels.path} was labeled at tau {made:g} and is re-tempered to tau {tau:g}; {100 * lost:.1f}% "
                   f"of its stored probabilities underflowed float16 and stay 0 (the teacher's smallest): label at "
                   f"--tau {tau:g} to keep them")


def _teacher_data(labels: artifacts.Labels, spec: str) -> dict | None:
    """The teacher's checkpoint metadata, when its training data is another source than the labels' pool
    (then the student trains on that labeled data plus the pool's pseudo-labels); else None."""
    teacher = labels.meta["teachers"][0]
    try:
        meta = artifacts.read_header(Path(teacher["path"]), kind="checkpoint").meta
    except DplError:
        return None
    made = meta.get("data", {}).get("spec")
    # A multi-head student learnt on an unlabeled pool: it has no labeled training data of its own to take.
    if made is None or meta.get("heads") or data.parse_spec(made)[0] == data.parse_spec(spec)[0]:
        return None
    return meta


def distill_experts(ctx: typer.Context, o: dict) -> None:
    """Several --labels: one student with a head per folder, on the pool they all label (core/methods/experts.py)."""
    state, cfg, model_opts, noise, opts, _, sinks, rt = _distill_setup(o)
    labels = [artifacts.read_labels(f, o["allow_partial"]) for f in o["labels_dir"]]
    for lab in labels:
        if lab.views is not None:
            raise DplError(f"{lab.path}: view labels (dpl label --views) replay into one student of one folder; a "
                           "student of several experts learns from their un-augmented labels: label without --views")
    made = labels[0].meta["data"]
    spec, split, size = common.data_of(labels[0].meta, o["data_spec"], data.Partition(), o["resize"], o["labels_dir"][0])
    pool = data.load(spec, partition=split, part=made.get("part", "all"), download=o["download"], resize=size,
                     channels=made.get("channels"), stream=o["stream"], check_all=True, workers=o["workers"])
    common.say(f"dpl: {len(labels)} heads on {pool.spec} ({pool.part}, {len(pool):,} images at "
               f"{'x'.join(map(str, pool.shape))})")
    names = o["head_names"].split(",") if o["head_names"] is not None else None
    with common.TrainingProgress("distill", sinks) as progress:
        result = experts.distill_experts(pool, labels, names, model_opts, noise, opts, cfg, rt, on_progress=progress,
                                         resume=state, download=o["download"])
    common.write_result(o["output"], result, state, o["keep_state"])


def evaluate(ctx: typer.Context, o: dict) -> None:
    """dpl eval of classifiers (each head of a multi-head student): accuracy, calibration, probes, seeds."""
    loaded = [artifacts.load_checkpoint(c) for c in o["checkpoints"]]
    rt = train.runtime(o["device"], workers=o["workers"])
    # A multi-head student gives a result per head: `loaded` then holds its checkpoint once per result.
    measured = [(m, ckpt) for path, ckpt in zip(o["checkpoints"], loaded)
                for m in measure_heads(path, ckpt, MeasureOptions.of(o), rt)]
    measured, loaded = [m for m, _ in measured], [ckpt for _, ckpt in measured]
    results = [r for r, _, _ in measured]
    common.flush_notes()
    if o["seeds"]:
        identities = [run_identity(c, r) for c, r in zip(loaded, results)]
        groups = metrics.seed_groups(results, identities, common.SEED_VARIANTS)
        if o["as_json"]:
            common.print_json({"results": results, "groups": groups})
        else:
            common.stderr.print(common.seed_table(groups, results[0]["data"], ("top1", "nll", "ece")))
    elif o["as_json"]:
        common.print_json(results[0] if len(results) == 1 else results)
    elif len(results) == 1:
        common.stderr.print(detail_table(results[0], results[0].get("classes") or loaded[0].meta.get("classes", [])))
    else:
        common.stderr.print(comparison_table(results))
    if measured[0][1] is not None and not o["as_json"]:
        _, dims, fit_on = measured[0]
        common.stderr.print(probe_table(results[0], dims, fit_on) if len(results) == 1
                            else probe_comparison_table(results, fit_on))


def detail_table(r: dict, classes: list[str]) -> Table:
    table = Table(title=f"{model_name(r)} on {r['data']}" + (f" ({r['part']})" if r["part"] != "all" else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("top1", "top5", "nll", "ece"):
        table.add_row(key, f"{r[key]:.4f}")
    table.add_row("n", str(r["n"]))
    table.add_row("weights", weights_note(r["weights"]))
    for name, acc in zip(classes, r["per_class"]):
        table.add_row(f"class {name}", "-" if acc is None else f"{acc:.4f}")
    return table


def comparison_table(results: list[dict]) -> Table:
    one_data = len({r["data"] for r in results}) == 1      # else (heads of a student): a column says which
    table = Table(title=f"on {results[0]['data']}" if one_data else "each on its own data")
    for col in ("model", *(() if one_data else ("data",)), "arch", "params", "weights", "top1", "top5", "nll", "ece"):
        table.add_column(col, justify="left" if col in ("model", "data", "arch", "weights") else "right")
    for r in results:
        table.add_row(model_name(r), *(() if one_data else (r["data"],)), r["arch"], f"{r['params']:,}",
                      weights_note(r["weights"]), *(f"{r[k]:.4f}" for k in ("top1", "top5", "nll", "ece")))
    return table


def weights_note(weights: dict) -> str:
    """Which weights a checkpoint holds: "best (epoch 7 of 10)", "last (epoch 10)", or "last" (older ones)."""
    kept, epoch = weights["kept"], weights.get("epoch")
    if epoch is None:
        return kept
    return f"{kept} (epoch {epoch} of {weights['epochs']})" if kept == "best" else f"{kept} (epoch {epoch})"


def label_quality(ctx: typer.Context, o: dict) -> None:
    """dpl eval of a label folder: pseudo-label accuracy overall and above confidence thresholds."""
    folder, download, as_json, allow_partial = o["checkpoints"][0], o["download"], o["as_json"], o["allow_partial"]
    labels, truth, ds = label_truth(folder, download, allow_partial)
    quality = metrics.label_quality(labels.label, labels.confidence, truth)
    if as_json:
        common.print_json({"labels": str(folder), "data": ds.spec, "part": ds.part, **quality})
    else:
        common.stderr.print(common.quality_table(quality, f"{folder} on {ds.spec} ({ds.part}, {len(ds)} samples)"))


def probe_table(r: dict, dims: dict[str, int], fit_on: str) -> Table:
    """One checkpoint: a row per probed layer (as in the RotNet paper's per-layer table), then kNN."""
    table = Table(title="frozen-feature probes", caption=f"{model_name(r)}; fit on {fit_on}, top-1 on {r['data']}")
    for col in ("probe", "features", "top1"):
        table.add_column(col, justify="left" if col == "probe" else "right")
    for path, top1 in r["linear_probe"].items():
        table.add_row(f"linear {path}", f"{dims[path]:,}", f"{top1:.4f}")
    for k, top1 in r["knn"].items():
        table.add_row(f"kNN k={k}", f"{dims[metrics.FEATURES]:,}", f"{top1:.4f}")
    return table


def probe_comparison_table(results: list[dict], fit_on: str) -> Table:
    """Several checkpoints: a row each, a column per probe."""
    table = Table(title="frozen-feature probes", caption=f"fit on {fit_on}, top-1 on {results[0]['data']}")
    columns = list(dict.fromkeys([f"linear {p}" for r in results for p in r["linear_probe"]]
                                 + [f"kNN k={k}" for r in results for k in r["knn"]]))
    table.add_column("model")
    for col in columns:
        table.add_column(col, justify="right")
    for r in results:
        found = {**{f"linear {p}": v for p, v in r["linear_probe"].items()}, **{f"kNN k={k}": v for k, v in r["knn"].items()}}
        table.add_row(model_name(r), *(f"{found[c]:.4f}" if c in found else "-" for c in columns))
    return table

