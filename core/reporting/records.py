"""The record of a run: the metrics log written as training goes, the history kept in the checkpoint, and the
lineage of an artifact.

Log format (JSON Lines, `OUT.metrics.jsonl` beside a training command's output, one object per line):

    {"event": "step",  "epoch": 1, "step": 10, "lr": ..., "loss": ..., TERM: ..., STAT: ...}
    {"event": "epoch", "epoch": 1, "step": 42, "lr": ..., "loss": ..., TERM: ..., STAT: ...,
     "seconds": ..., "images_per_s": ..., ["val_top1", "val_nll", "val_ece", "val_seconds"]}

`epoch` counts from 1; `step` is the number of optimizer steps taken so far. A step line holds the running
means of the epoch so far, an epoch line the means over the epoch. TIMING_FIELDS vary from run to run; every
other field is reproduced exactly by `--resume`. A checkpoint keeps its epoch lines (without "event", and
without per-class vectors, which grow with the classes) as `meta["history"]`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .. import DplError, artifacts, textfiles

TIMING_FIELDS = ("seconds", "images_per_s", "val_seconds")
LOG_SUFFIX = ".metrics.jsonl"
VECTOR_FIELDS = ("pseudo_class_frac",)   # the per-class vectors a record holds; every other field is one number
MAX_TENSORBOARD_VECTOR = 100     # a per-class vector longer than this (many classes) stays in the log alone


def log_path(output: Path) -> Path:
    """Where a training command writes its metrics log: t0.safetensors -> t0.metrics.jsonl."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(".safetensors") + LOG_SUFFIX)


def read_log(path: Path) -> list[dict]:
    """Every record of a metrics log, in order; a line that is not one (not JSON, not a step or epoch record,
    a field that holds no number) is refused by its line number: plot and report read any file handed to
    them."""
    records = []
    for number, line in enumerate(textfiles.read_text(path, "metrics log").splitlines(), 1):
        if not line.strip():
            continue
        record = textfiles.parse_json(line, f"{path}: line {number}")
        if not isinstance(record, dict) or record.get("event") not in ("step", "epoch"):
            raise DplError(f"{path}: line {number} is not a step or epoch record: not a dpl metrics log")
        check_record(record, f"{path}: line {number}")
        records.append(record)
    return records


def _is_number(v) -> bool:
    """A number a figure can plot: an int or float (not a bool) within float's range."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def check_record(record: dict, where: str) -> None:
    """A record as dpl writes it: whole `epoch` and `step` counts, and at least one measure: every other field
    a number or null (not measured), or for VECTOR_FIELDS a list of them."""
    for key in ("epoch", "step"):
        v = record.get(key)
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise DplError(f"{where}: {key!r} is {json.dumps(v)[:40]}, expected a whole number")
    measures = 0
    for key, v in record.items():
        if key in ("event", "epoch", "step") or v is None:
            continue
        vector = key in VECTOR_FIELDS and isinstance(v, list) and all(x is None or _is_number(x) for x in v)
        if not (_is_number(v) or vector):
            raise DplError(f"{where}: field {str(key)[:40]!r} holds a {type(v).__name__}, expected a number")
        measures += 1
    if not measures:
        raise DplError(f"{where}: a record with no measure (loss, lr, ...)")


def history_of(path: Path) -> list[dict]:
    """The per-epoch records of a run, from its checkpoint or its metrics log."""
    path = Path(path)
    if path.name.endswith(".jsonl"):
        history = [{k: v for k, v in r.items() if k != "event"} for r in read_log(path) if r["event"] == "epoch"]
    else:
        history = artifacts.read_header(path, kind="checkpoint").meta.get("history")
        if history is not None and not (isinstance(history, list) and all(isinstance(r, dict) for r in history)):
            raise DplError(f"{path}: its training history is not a list of epoch records")
        for n, record in enumerate(history or [], 1):
            check_record(record, f"{path}: history record {n}")
    if not history:
        raise DplError(f"{path}: no training history (made by an older dpl, or by pretrain --epochs 0)")
    return history


def lineage_of(path: Path) -> list[dict]:
    """The chain of models that led to a checkpoint, oldest first, following its teacher (through the labels
    it learnt from) or its --init: [{"path", "arch", "test_top1", "command", "role"}, ...]. A parent that
    is no longer on disk ends the chain."""
    chain, seen = [], set()
    path, role = Path(path), "model"
    while path is not None and path.resolve() not in seen:
        seen.add(path.resolve())
        meta = artifacts.read_header(path, kind="checkpoint").meta
        chain.append({"path": str(path), "arch": meta["arch"]["name"], "role": role,
                      "test_top1": meta.get("metrics", {}).get("test_top1"), "command": meta.get("command")})
        path, role = _teacher_of(meta)
    return chain[::-1]


def _teacher_of(meta: dict) -> tuple[Path | None, str]:
    parents = {p["role"]: p for p in meta.get("parents", [])}
    if "teacher" in parents:
        return _existing(parents["teacher"]["path"]), "teacher"
    if "labels" in parents:
        folder = _existing(parents["labels"]["path"])
        if folder is None:
            return None, ""
        try:
            teachers = artifacts.read_labels(folder, allow_partial=True).meta.get("teachers", [])
        except DplError:
            return None, ""
        return (_existing(teachers[0]["path"]) if teachers else None), "teacher"
    if "init" in parents:
        return _existing(parents["init"]["path"]), "init"
    return None, ""


def _existing(path: str) -> Path | None:
    return Path(path) if Path(path).exists() else None


class MetricsLog:
    """The JSON Lines sink of `train.fit`'s events: appended and flushed record by record. A fresh run starts
    the file anew; a resumed run keeps the records up to the step it resumes from (rebuilt from the resume
    state's history when the file is gone), so the log reads as if the run had never stopped."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            self._start(event)
        elif kind in ("step", "epoch"):
            self._append([event])

    def _start(self, event: dict) -> None:
        kept = []
        if event["resumed"]:
            try:
                kept = [r for r in read_log(self.path) if r["step"] <= event["step"]]
            except DplError:
                kept = [{"event": "epoch", **r} for r in event["history"]]
        artifacts.atomic_write(self.path, lambda tmp: tmp.write_text("".join(_line(r) for r in kept)))

    def _append(self, records: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.write("".join(_line(r) for r in records))


def _line(record: dict) -> str:
    return json.dumps({k: clean(v) for k, v in record.items()}) + "\n"


class TensorBoardLog:
    """The same records as scalars through torch.utils.tensorboard: `step/NAME` (running means) and
    `epoch/NAME` (epoch means), both against the optimizer step; a list (per-class fractions) as NAME/CLASS,
    up to MAX_TENSORBOARD_VECTOR classes.
    A resumed run purges what the interrupted one wrote after the step it resumes from."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.writer = None
        self.writer_class = tensorboard_writer()

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            self.writer = self.writer_class(str(self.folder), purge_step=event["step"] if event["resumed"] else None)
            return
        if kind not in ("step", "epoch") or self.writer is None:
            return
        x = event["step"]
        for name, value in event.items():
            if name in ("event", "epoch", "step"):
                continue
            if isinstance(value, list) and len(value) > MAX_TENSORBOARD_VECTOR:
                continue
            values = enumerate(value) if isinstance(value, list) else [(None, value)]
            for i, v in values:
                if v is not None:
                    self.writer.add_scalar(f"{kind}/{name}" + ("" if i is None else f"/{i}"), v, x)
        if kind == "epoch":
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def tensorboard_writer():
    """torch.utils.tensorboard's SummaryWriter, or a DplError saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DplError("--tensorboard needs the tensorboard package: pip install 'dpl[tensorboard]' "
                       "(or pip install tensorboard)") from None
    return SummaryWriter


def clean(value):
    """A JSON-safe value: NaN and infinities as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value
