"""dpl export and dpl predict for classifiers and multi-head students."""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import typer

from .. import common
from ...core import DplError, artifacts, data, deploy
from ...core.data import augment, images as image_files
from ...core.engine import train
from ...core.reporting import evaluate


def export(ctx: typer.Context, o: dict) -> None:
    """Export, check in the target runtime, then write (atomically: nothing on a failed check)."""
    fmt, output = o["format"], o["output"]
    if fmt not in deploy.FORMATS:
        raise DplError(f"unknown export format {fmt!r}; valid: {', '.join(deploy.FORMATS)}")
    if o["int8"] and (fmt != "onnx" or o["half"]):
        raise DplError("--int8 is onnxruntime's quantisation of a float32 ONNX model: give it with --format onnx "
                       "and without --half")
    common.check_output(output, o["force"], {"checkpoint": o["checkpoint"]})
    ckpt = artifacts.load_checkpoint(o["checkpoint"])
    ds = _check_data(ckpt, o["data_spec"], o["download"])
    rows = torch.arange(min(o["check"], len(ds)))
    images = image_files.rows_of(ds.images, rows)
    if not torch.is_tensor(images):
        images = image_files.decode_all(images)[0]
    labels = ds.labels[rows]
    rt = train.runtime("cpu")
    model = ckpt.build_model().eval()
    reference = evaluate.predict(model, images, ckpt.input, rt, o["batch_size"])
    net = deploy.wrap(model, ckpt.meta)
    example = images[:2].float() / 255
    if o["half"]:
        net, example = net.half(), example.half()
    info = deploy.describe(ckpt.meta, ckpt.path, ckpt.sha256(), fmt, o["half"])
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        if fmt == "onnx":
            exporter = deploy.export_onnx(net, example, tmp, info)
            exported = deploy.load_onnx(tmp)
        else:
            exporter = deploy.export_torchscript(net, example, tmp, info)
            exported = deploy.load_torchscript(tmp)
        atol, rtol = (deploy.HALF_ATOL, deploy.HALF_RTOL) if o["half"] else (deploy.ATOL, deploy.RTOL)
        logits = _all_logits(exported, images, o["batch_size"])
        parity = deploy.compare(reference, logits, labels, atol, rtol)
        if not parity["within_tolerance"] or parity["clear_changes"]:
            raise DplError(f"the {fmt} export does not compute what {ckpt.path} does: max |logit difference| "
                           f"{parity['max_abs_diff']:.3g} on {parity['images']} images of {ds.spec} (tolerance "
                           f"{atol:g} + {rtol:g} |logit|), top-1 agreement {parity['top1_agreement']:.4f}; "
                           "nothing written")
        result = {"path": str(output), "format": fmt, "exporter": exporter, "opset": info["opset"],
                  "precision": info["precision"], "checked_on": ds.spec, "parity": parity}
        if o["int8"]:
            quantized = tmp.with_name(tmp.name + ".int8")
            try:
                deploy.quantize_int8(tmp, quantized)
                deploy.set_info(quantized, {**exported.info, "precision": "int8-dynamic"})
                int8_logits = _all_logits(deploy.load_onnx(quantized), images, o["batch_size"])
                q = deploy.compare(reference, int8_logits, labels)
                os.replace(quantized, tmp)
            finally:
                quantized.unlink(missing_ok=True)
            result.update(precision="int8-dynamic", int8=q)
        result["bytes"] = tmp.stat().st_size
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    common.flush_notes()
    if o["as_json"]:
        common.print_json(result)
    else:
        _say_export(result)
        print(output)


def _check_data(ckpt: artifacts.Checkpoint, spec: str | None, download: bool) -> data.Dataset:
    """The images an export is checked on: --data, else the test split of the checkpoint's data, else that data."""
    c, s = ckpt.input["channels"], ckpt.input["size"]
    made = ckpt.meta.get("data", {})
    if spec:
        candidates = [spec]
    else:
        candidates = [f"{data.parse_spec(made['spec'])[0]}:test", made["spec"]] if "spec" in made else []
    if not candidates:
        raise DplError(f"{ckpt.path}: records no data to check the export on; give --data")
    errors = []
    for candidate in candidates:
        resize = made.get("resize") or (s if data.is_image_files(candidate) else None)
        try:
            ds = data.load(candidate, resize=resize, channels=c, download=download)
        except DplError as e:
            errors.append(str(e))
            continue
        if ds.shape != (c, s, s):
            raise DplError(f"{ckpt.path} takes {c}x{s}x{s} images and {ds.spec} has {'x'.join(map(str, ds.shape))}"
                           f"{'' if ds.shape[0] == c else ': their channels differ'}")
        return ds
    raise DplError(f"no images to check the export on ({errors[-1]}); give --data")


def _all_logits(exported: deploy.Exported, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """The exported model's logits of every image, heads side by side (as the checkpoint's one output)."""
    return np.concatenate([np.concatenate(exported.logits(images[i:i + batch_size]), axis=1)
                           for i in range(0, len(images), batch_size)])


def _say_export(r: dict) -> None:
    p = r["parity"]
    accuracy = (f"; top-1 {p['top1_export']:.4f} (checkpoint {p['top1_checkpoint']:.4f})"
                if p["top1_checkpoint"] is not None else "")
    opset = f", opset {r['opset']}" if r["opset"] else ""
    precision = "float32" if "int8" in r else r["precision"]
    common.say(f"dpl: {r['format']} ({r['exporter']} exporter{opset}, {precision}) checked on {p['images']} images "
               f"of {r['checked_on']}: max |logit difference| {p['max_abs_diff']:.2g}, top-1 agreement "
               f"{p['top1_agreement']:.4f}{accuracy}")
    if "int8" in r:
        q = r["int8"]
        change = ""
        if q["top1_checkpoint"] is not None:
            points = 100 * (q["top1_export"] - q["top1_checkpoint"])
            change = f"; top-1 {q['top1_export']:.4f} against {q['top1_checkpoint']:.4f} ({points:+.2f} points)"
        common.say(f"dpl: int8 dynamic quantisation: top-1 agreement with the checkpoint {q['top1_agreement']:.4f}, "
                   f"max |logit difference| {q['max_abs_diff']:.2g}{change}")
    common.say(f"dpl: {r['bytes'] / 1e6:.2f} MB written")
    common.flush_notes()


# ---- predict ----------------------------------------------------------------------------------------------------

PREDICTION_FILES = (".csv", ".jsonl")


@dataclass
class Predictor:
    """What a task predicts for a batch of uint8 images: `run(x)` -> per-image outputs; `record(out, i)` -> image
    i's JSON object (without its file); `header` and `row(out, i)` -> its CSV rows (a detector writes one per box)."""

    channels: int
    size: int
    runtime: str
    run: object
    record: object
    header: list[str]
    rows: object
    classes: list[str] = field(default_factory=list)       # a classifier's, to score against the source's labels


def predict(ctx: typer.Context, o: dict) -> None:
    """dpl predict with a classifier, a multi-head student, their ONNX exports, a detector or a keypoint model."""
    output = o["output"]
    if output.suffix.lower() not in PREDICTION_FILES:
        raise DplError(f"{output}: predictions are written as {' or '.join(PREDICTION_FILES)}; name the file so")
    if not output.parent.is_dir():
        raise DplError(f"{output}: the folder {output.parent} does not exist")
    common.check_output(output, o["force"], {"model": o["model"]})
    source = o["model"]
    files = data.is_image_files(o["data_spec"])
    if source.suffix.lower() == ".onnx":
        exported, rt = deploy.load_onnx(source), None
    else:
        task = artifacts.read_header(source, kind="checkpoint").meta.get("task", "classifier")
        rt = train.runtime(o["device"], workers=o["workers"])
    predictor = (_classifier(exported, None, None, o["topk"]) if rt is None else
                 _detector(source, rt, o) if task == "detector" else
                 _keypoints(source, rt) if task == "keypoints" else
                 _classifier(None, artifacts.load_checkpoint(source), rt, o["topk"]))
    c, s = predictor.channels, predictor.size
    ds = data.load(o["data_spec"], resize=o["resize"] or (s if files else None), channels=c, download=o["download"],
                   stream=True if files else None, workers=o["workers"])
    if ds.shape != (c, s, s):
        fix = "their channels differ" if ds.shape[0] != c else f"give --resize {s}"
        raise DplError(f"{source} takes {c}x{s}x{s} images and {ds.spec} has {'x'.join(map(str, ds.shape))}: {fix}")
    common.say_source(ds)
    scored = bool(predictor.classes) and bool((ds.labels >= 0).any())
    header = predictor.header + (["true"] if scored else [])
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    skipped, done, correct, known = [], 0, 0, 0
    start = time.perf_counter()
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f) if output.suffix.lower() == ".csv" else None
            if writer:
                writer.writerow(header)
            with torch.inference_mode():
                for begin, x, ok in image_files.batches(ds.images, o["batch_size"], o["workers"],
                                                        pin=bool(rt and rt.cuda), model_on_cpu=not (rt and rt.cuda)):
                    out = predictor.run(x)
                    for i in range(len(ok)):
                        name = _name(ds, begin + i)
                        if not ok[i]:
                            skipped.append(name)
                            continue
                        truth = ds.classes[int(ds.labels[begin + i])] if scored and ds.labels[begin + i] >= 0 else None
                        record = {"file": name, **predictor.record(out, i)}
                        if truth is not None:
                            known += 1
                            correct += record["top"][0]["class"] == truth
                            record["true"] = truth
                        if writer:
                            writer.writerows([[name, *row, *([truth or ""] if scored else [])]
                                              for row in predictor.rows(out, i)])
                        else:
                            f.write(json.dumps(record) + "\n")
                        done += 1
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    result = {"path": str(output), "images": done, "skipped": len(skipped), "skipped_files": skipped[:data.MAX_LISTED],
              "seconds": seconds, "images_per_s": done / seconds if seconds else None, "runtime": predictor.runtime,
              "top1": correct / known if known else None}
    common.flush_notes()
    if o["as_json"]:
        common.print_json(result)
        return
    if skipped:
        common.say(f"dpl: skipped {len(skipped)} unreadable images (first: {skipped[0]})")
    accuracy = f"; top-1 {result['top1']:.4f} against the source's classes" if known else ""
    common.say(f"dpl: predicted {done:,} images of {ds.spec} with {result['runtime']} in {seconds:.1f} s "
               f"({result['images_per_s']:,.0f} images/s){accuracy}")
    common.flush_notes()
    print(output)


def _classifier(exported: deploy.Exported | None, ckpt: artifacts.Checkpoint | None, rt, topk: int) -> Predictor:
    """Top-k classes of a checkpoint (on the runtime's device) or an ONNX export (onnxruntime), per head."""
    if ckpt is not None:
        inp, heads, classes = ckpt.input, ckpt.heads, list(ckpt.meta.get("classes") or [])
        model = ckpt.build_model().to(rt.device).eval()

        def logits(x):
            with rt.autocast():
                return model(augment.to_input(x.to(rt.device, non_blocking=True), inp["mean"], inp["std"],
                                              rt.cuda)).float().cpu()
        runtime = f"dpl ({rt.device.type})"
    else:
        info = exported.info
        inp, heads, classes = info["input"], info.get("heads") or [], info.get("classes") or []

        def logits(x):
            return torch.from_numpy(np.concatenate(exported.logits(x), axis=1))
        runtime = "onnxruntime"
    groups = [(h["name"], list(h["classes"])) for h in heads] or [("", classes)]
    if any(not names for _, names in groups):
        raise DplError(f"{ckpt.path if ckpt is not None else exported.path}: records no class names (a pretext "
                       "or probe backbone has no classes to predict)")
    k = min(topk, *(len(names) for _, names in groups))

    def run(x):
        z = logits(x)
        top = [p.softmax(1).topk(k, dim=1) for p in z.split([len(n) for _, n in groups], dim=1)]
        return [[[(names[j], float(v)) for v, j in zip(t.values[i], t.indices[i])] for i in range(len(z))]
                for (_, names), t in zip(groups, top)]

    def record(out, i):
        tops = [[{"class": c, "prob": round(p, 6)} for c, p in head[i]] for head in out]
        return {"heads": dict(zip((g for g, _ in groups), tops))} if heads else {"top": tops[0]}

    header = [f"{g + '.' if g else ''}{col}{'' if j == 1 else f'_{j}'}" for g, _ in groups
              for j in range(1, k + 1) for col in ("class", "prob")]
    return Predictor(inp["channels"], inp["size"], runtime, run, record, ["file", *header],
                     lambda out, i: [[v for head in out for c, p in head[i] for v in (c, f"{p:.6f}")]],
                     classes=[] if heads else classes)


def _detector(path: Path, rt, o: dict) -> Predictor:
    """A detector's boxes (image pixels, x0 y0 x1 y1), classes and scores; a CSV row per box."""
    from ...core.methods import detect

    model, ckpt = detect.load_detector(path)
    model.to(rt.device).eval()
    classes = list(ckpt.meta.get("classes") or [])

    def run(x):
        return detect.detect(model, x, ckpt.input, rt, batch_size=len(x))

    def record(out, i):
        b = out.of(i)
        return {"boxes": [{"class": classes[int(c)], "score": round(float(s), 6),
                           "box": [round(float(v), 2) for v in box]}
                          for box, c, s in zip(b["boxes"], b["labels"], b["scores"])]}

    def rows(out, i):       # a row per box; an image without boxes keeps a row with its name alone
        return [[r["class"], f"{r['score']:.6f}", *r["box"]] for r in record(out, i)["boxes"]] or [[""] * 6]

    c, s = ckpt.input["channels"], ckpt.input["size"]
    return Predictor(c, s, f"dpl ({rt.device.type})", run, record, ["file", "class", "score", "x0", "y0", "x1", "y1"],
                     rows)


def _keypoints(path: Path, rt) -> Predictor:
    """A keypoint model's keypoints (image pixels) and confidences."""
    from ...core.methods import keypoints

    model, ckpt = keypoints.load_model(path)
    model.to(rt.device).eval()
    names = list(ckpt.meta["keypoints"]["names"])
    inp = ckpt.input

    def run(x):
        return keypoints.predict(model, augment.to_input(x.to(rt.device), inp["mean"], inp["std"]), len(x))

    def record(out, i):
        coords, conf = out
        return {"keypoints": {n: [round(float(coords[i, j, 0]), 2), round(float(coords[i, j, 1]), 2),
                                  round(float(conf[i, j]), 4)] for j, n in enumerate(names)}}

    def rows(out, i):
        return [[v for x, y, p in record(out, i)["keypoints"].values() for v in (x, y, p)]]

    header = ["file", *(f"{n}_{v}" for n in names for v in ("x", "y", "conf"))]
    return Predictor(inp["channels"], inp["size"], f"dpl ({rt.device.type})", run, record, header, rows)


def _name(ds: data.Dataset, index: int) -> str:
    if ds.keys is None:
        return str(index)
    key = ds.keys[index]
    return os.fsdecode(key) if isinstance(key, bytes) else str(key)
