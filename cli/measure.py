"""Measuring checkpoints and label folders: what `dpl eval` prints, shared with `dpl plot` and `dpl report`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import common
from ..core import DplError

artifacts = common.lazy("dpl.core.artifacts")
data = common.lazy("dpl.core.data")
evaluate = common.lazy("dpl.core.reporting.evaluate")
experts = common.lazy("dpl.core.methods.experts")
label = common.lazy("dpl.core.methods.label")
models = common.lazy("dpl.core.models")
objectives = common.lazy("dpl.core.methods.common")
if TYPE_CHECKING:
    import torch

    from ..core.engine import train


@dataclass(frozen=True, kw_only=True)
class MeasureOptions:
    """What `dpl eval` measures a checkpoint on, and how (its options of the same names)."""

    data_spec: str | None = None        # None: the test split of the checkpoint's own source
    labeled_per_class: int | None = None
    labeled: int | None = None
    split_seed: int = 0
    part: str | None = None
    download: bool = False
    resize: int | None = None
    stream: bool | None = None
    linear_probe: bool = False
    layer: tuple[str, ...] = ()
    knn: tuple[int, ...] = ()
    batch_size: int = 512
    workers: int | None = None
    head: tuple[str, ...] = ()          # a multi-head student: these heads only (all when empty)

    @staticmethod
    def of(o: dict) -> MeasureOptions:
        """From a command's options (its locals())."""
        return MeasureOptions(**{k: tuple(o[k] or ()) if k in ("layer", "knn", "head") else o[k]
                                 for k in MeasureOptions.__dataclass_fields__ if k in o})


def measure_checkpoint(path: Path, rt: train.Runtime, data_spec: str | None = None) -> dict:
    """What `dpl eval PATH --json` prints: the checkpoint's metrics on `data_spec`, by default the test split
    of its own data source (a multi-head student: its first head's, on that head's expert's test split)."""
    ckpt = artifacts.load_checkpoint(path)
    heads = (ckpt.heads[0]["name"],) if ckpt.heads else ()
    return measure_heads(Path(path), ckpt, MeasureOptions(data_spec=data_spec, head=heads), rt)[0][0]


def measure_heads(path: Path, ckpt: artifacts.Checkpoint, o: MeasureOptions,
                  rt: train.Runtime) -> list[tuple[dict, dict | None, str]]:
    """`measure` of a checkpoint, or of each head of a multi-head student (those of `o.head`, else all), each
    on its own expert's test split unless `o.data_spec` names one data for the one head chosen."""
    if not ckpt.heads:
        if o.head:
            ckpt.head(o.head[0])        # refused: no heads
        return [measure(path, ckpt, o, rt)]
    heads = [ckpt.head(n) for n in dict.fromkeys(o.head)] if o.head else ckpt.heads
    if o.data_spec is not None and len(heads) > 1:
        raise DplError(f"{path}: its heads ({', '.join(h['name'] for h in heads)}) each have their own test data; "
                       "--data measures one: give --head NAME")
    return [measure(path, ckpt, o, rt, h) for h in heads]


def model_name(result: dict) -> str:
    """How tables name a measured model: its path, and the head of a multi-head student."""
    return result["checkpoint"] + (f" (head {result['head']})" if "head" in result else "")


def run_identity(ckpt: artifacts.Checkpoint, result: dict) -> list[str] | None:
    """The recorded command that `--seeds` groups runs by; a head's result adds its head, so that the heads
    of repeated students are grouped head by head."""
    command = ckpt.meta.get("command")
    return command + ["--head", result["head"]] if command is not None and "head" in result else command


def measure(path: Path, ckpt: artifacts.Checkpoint, o: MeasureOptions, rt: train.Runtime,
            head: dict | None = None) -> tuple[dict, dict | None, str]:
    """One checkpoint's metrics on its data (and its probes: their feature sizes and what they were fit on).
    With a `head` of a multi-head student: that head's, by default on its expert's test split at the
    student's input size; the result names the head."""
    split = data.Partition(labeled_per_class=o.labeled_per_class, labeled=o.labeled, seed=o.split_seed)
    if head is None:
        spec = o.data_spec or data.parse_spec(ckpt.meta.get("data", {}).get("spec", "digits"))[0]
        size = o.resize or ckpt.meta.get("data", {}).get("resize")
        if size is None and data.is_image_files(spec):
            size = ckpt.input["size"]
    else:
        spec = o.data_spec or head.get("test")
        if spec is None:
            raise DplError(f"{path}: the test data of head {head['name']!r} is unknown (its expert's checkpoint was "
                           f"gone when it was trained): give --head {head['name']} --data SPEC")
        size = o.resize or ckpt.input["size"]
    try:
        ds = data.load(spec, default_split="test", partition=split, part=o.part or "all", download=o.download,
                       resize=size, channels=ckpt.input["channels"], stream=o.stream, workers=o.workers)
    except DplError as e:
        if o.data_spec or str(path) in str(e):
            raise
        raise DplError(f"{path}: its recorded test data {spec}: {e}") from None
    common.say_source(ds)
    if head is None:
        objectives.check_input(ckpt, ds, path)
    else:
        experts.check_head_input(ckpt, head, ds)
    model = ckpt.build_model()
    logits = evaluate.predict(rt.prepare(model), ds.images, ckpt.input, rt, o.batch_size, rt.workers)
    if head is not None:
        logits = experts.head_logits(logits, head)
    metrics = evaluate.classification_metrics(logits, ds.labels, ds.num_classes)
    unread = int((~evaluate.readable(logits)).sum()) + len(ds.skipped)
    if unread:
        metrics["skipped"] = unread
    # the confusion matrix and the reliability bins last: the figures a reader looks for first stay in front
    result = {**{k: v for k, v in metrics.items() if k not in ("confusion", "reliability")},
              "checkpoint": str(path), "arch": ckpt.arch["name"], "params": models.count_params(model),
              "data": ds.spec, "part": ds.part, "weights": ckpt.meta.get("weights") or {"kept": "last"},
              "seed": ckpt.meta.get("seed"), "confusion": metrics["confusion"], "reliability": metrics["reliability"]}
    if head is not None:
        result = {"head": head["name"], "classes": head["classes"], **result}
    layers, ks = list(o.layer or []), list(o.knn or [])
    if not (o.linear_probe or layers or ks):
        return result, None, ""
    probe_train = data.load(ds.source, default_split="train", partition=split, part="labeled" if split.active else "all",
                            download=o.download, resize=size, channels=ckpt.input["channels"], check_all=True,
                            workers=o.workers)
    found = evaluate.probe(model, ckpt.input, probe_train, ds, rt, layers, o.linear_probe or bool(layers), ks,
                           o.batch_size)
    result.update({"linear_probe": found.linear, "knn": {str(k): v for k, v in found.knn.items()}})
    return result, found.dims, f"{probe_train.spec} ({probe_train.part}, {len(probe_train)} samples)"


def label_truth(folder: Path, download: bool = False,
                allow_partial: bool = False) -> tuple[artifacts.Labels, torch.Tensor, data.Dataset]:
    """A label folder, the true class of each of its rows (-1 where unknown, e.g. in a pool of photos) and
    the data it was made for."""
    labels = artifacts.read_labels(folder, allow_partial)
    made = labels.meta["data"]
    spec, split, resize = common.data_of(labels.meta, None, data.Partition(), None)
    ds = data.load(spec, partition=split, part=made.get("part", "all"), download=download, resize=resize,
                   channels=made.get("channels"))
    positions = label.check_labels_fit(labels, ds)
    return labels, ds.labels[positions], ds
