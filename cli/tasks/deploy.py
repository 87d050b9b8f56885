"""dpl export and dpl predict for classifiers and multi-head students."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import typer

from .. import common
from ...core import DplError, artifacts, data, deploy
from ...core.data import images as image_files
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
    info = deploy.describe(ckpt.meta, ckpt.path, ckpt.sha256(), "", fmt, o["half"], False)
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
                exported = deploy.load_onnx(quantized, {**exported.info, "precision": "int8-dynamic"})
                q = deploy.compare(reference, _all_logits(exported, images, o["batch_size"]), labels)
                _set_info(quantized, {**exported.info, "exporter": exporter})
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


def _set_info(path: Path, info: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = deploy.META_KEY, json.dumps(info)
    onnx.save(model, str(path))


def _check_data(ckpt: artifacts.Checkpoint, spec: str | None, download: bool) -> data.Dataset:
    """The images an export is checked on: --data, else the test split of the checkpoint's data, else that data."""
    c, s = ckpt.input["channels"], ckpt.input["size"]
    made = ckpt.meta.get("data", {})
    candidates = [spec] if spec else [f"{data.parse_spec(made['spec'])[0]}:test", made["spec"]] if "spec" in made else []
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

FORMATS = (".csv", ".jsonl")


def predict(ctx: typer.Context, o: dict) -> None:
    output = o["output"]
    if output.suffix.lower() not in FORMATS:
        raise DplError(f"{output}: predictions are written as {' or '.join(FORMATS)}; name the file so")
    if not output.parent.is_dir():
        raise DplError(f"{output}: the folder {output.parent} does not exist")
    common.check_output(output, o["force"], {"model": o["model"]})
    source = o["model"]
    if source.suffix.lower() == ".onnx":
        exported = deploy.load_onnx(source)
        info, rt = exported.info, None
        inp, heads, classes = info["input"], info.get("heads") or [], info.get("classes") or []
    else:
        ckpt = artifacts.load_checkpoint(source)
        rt = train.runtime(o["device"], workers=o["workers"])
        model = ckpt.build_model().to(rt.device).eval()
        inp, heads, classes = ckpt.input, ckpt.heads, list(ckpt.meta.get("classes") or [])
    c, s = inp["channels"], inp["size"]
    resize = o["resize"] or (s if data.is_image_files(o["data_spec"]) else None)
    ds = data.load(o["data_spec"], resize=resize, channels=c, download=o["download"],
                   stream=True if data.is_image_files(o["data_spec"]) else None, workers=o["workers"])
    if ds.shape != (c, s, s):
        fix = "their channels differ" if ds.shape[0] != c else f"give --resize {s}"
        raise DplError(f"{source} takes {c}x{s}x{s} images and {ds.spec} has {'x'.join(map(str, ds.shape))}: {fix}")
    common.say_source(ds)
    groups = [(h["name"], list(h["classes"])) for h in heads] or [("", classes)]
    if any(not names for _, names in groups):
        raise DplError(f"{source}: records no class names")
    k = min(o["topk"], *(len(names) for _, names in groups))
    columns = _columns(groups, k, known=bool((ds.labels >= 0).any()) and not heads)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    skipped, done, correct, known = [], 0, 0, 0
    start = time.perf_counter()
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f) if output.suffix.lower() == ".csv" else None
            if writer:
                writer.writerow(columns)
            rows = (_onnx_batches(exported, ds, o) if rt is None else _model_batches(model, inp, ds, rt, o))
            for begin, logits, ok in rows:
                probs = torch.from_numpy(np.concatenate(logits, axis=1)).float()
                splits = [len(names) for _, names in groups]
                per_head = [p.softmax(1).topk(k, dim=1) for p in probs.split(splits, dim=1)]
                for i in range(len(ok)):
                    index = begin + i
                    name = _name(ds, index)
                    if not ok[i]:
                        skipped.append(name)
                        continue
                    top = [[(names[j], float(p)) for p, j in zip(t.values[i], t.indices[i])]
                           for (_, names), t in zip(groups, per_head)]
                    truth = int(ds.labels[index])
                    if truth >= 0 and not heads:
                        known += 1
                        correct += int(top[0][0][0] == classes[truth])
                    _write(f, writer, name, groups, top, ds.classes[truth] if truth >= 0 and not heads else None,
                           "true" in columns)
                    done += 1
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    result = {"path": str(output), "images": done, "skipped": len(skipped), "skipped_files": skipped[:data.MAX_LISTED],
              "seconds": seconds, "images_per_s": done / seconds if seconds else None,
              "runtime": "onnxruntime" if rt is None else f"dpl ({rt.device.type})",
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


def _columns(groups: list[tuple[str, list[str]]], k: int, known: bool) -> list[str]:
    out = ["file"]
    for head, _ in groups:
        prefix = f"{head}." if head else ""
        for j in range(1, k + 1):
            suffix = "" if j == 1 else f"_{j}"
            out += [f"{prefix}class{suffix}", f"{prefix}prob{suffix}"]
    return out + (["true"] if known else [])


def _write(f, writer, name: str, groups, top, truth: str | None, with_truth: bool) -> None:
    if writer:
        row = [name] + [v for head in top for cls, p in head for v in (cls, f"{p:.6f}")]
        writer.writerow(row + ([truth or ""] if with_truth else []))
        return
    record = {"file": name}
    if groups[0][0]:
        record["heads"] = {head: [{"class": cls, "prob": round(p, 6)} for cls, p in t]
                           for (head, _), t in zip(groups, top)}
    else:
        record["top"] = [{"class": cls, "prob": round(p, 6)} for cls, p in top[0]]
    if truth is not None:
        record["true"] = truth
    f.write(json.dumps(record) + "\n")


def _name(ds: data.Dataset, index: int) -> str:
    if ds.keys is None:
        return str(index)
    key = ds.keys[index]
    return os.fsdecode(key) if isinstance(key, bytes) else str(key)


def _model_batches(model, inp: dict, ds: data.Dataset, rt, o: dict):
    with torch.inference_mode():
        start = 0
        for x, ok in evaluate.model_inputs(ds.images, inp, rt, o["batch_size"], o["workers"]):
            with rt.autocast():
                logits = model(x).float().cpu().numpy()
            yield start, [logits], ok.cpu().numpy()
            start += len(ok)


def _onnx_batches(exported: deploy.Exported, ds: data.Dataset, o: dict):
    for start, x, ok in image_files.batches(ds.images, o["batch_size"], o["workers"]):
        yield start, exported.logits(x), ok.numpy()
