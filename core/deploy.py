"""Exported models: a classifier checkpoint as ONNX (run by onnxruntime) or TorchScript, with the input
normalisation folded in, and the check that the export computes what the checkpoint does.

An exported model takes float32 images (N, C, S, S), pixels / 255 in [0, 1] (RGB or grey as the checkpoint's
input), any batch size; it subtracts the checkpoint's mean and divides by its std itself, so a user needs no
dpl numbers. It returns the logits, one output per head for a multi-head student. The ONNX file's
metadata_props (TorchScript: the extra file `dpl.json`) hold `dpl` (JSON: task, classes or heads, input,
normalisation, exporter, opset, the checkpoint's sha256 and path).

ONNX goes through torch.onnx's dynamo exporter (torch.export), falling back to the TorchScript-based one where the
model does not export (the metadata says which did). Dynamic int8 quantisation is onnxruntime.quantization's.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import DplError
from .models.registry import first_line

FORMATS = ("onnx", "torchscript")
OPSET = 18
META_KEY = "dpl"              # the metadata entry of an export
TORCHSCRIPT_META = "dpl.json"
# An export passes when every logit is within ATOL + RTOL * |logit| of the checkpoint's (float32 both sides, other
# kernels: differences of 1e-6 are usual) and no image's top-1 changes unless its two best logits were within that.
ATOL, RTOL = 1e-3, 1e-3
HALF_ATOL, HALF_RTOL = 5e-2, 2e-2     # float16 weights and activations


class Normalized(nn.Module):
    """The checkpoint's model behind its input normalisation; a multi-head student's logits split per head."""

    def __init__(self, model: nn.Module, mean, std, heads: list[dict]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.splits = [len(h["classes"]) for h in heads]

    def forward(self, x: torch.Tensor):
        logits = self.model((x - self.mean) / self.std)
        return tuple(logits.split(self.splits, dim=1)) if self.splits else logits


def output_names(heads: list[dict]) -> list[str]:
    return [f"logits_{h['name']}" for h in heads] if heads else ["logits"]


def describe(meta: dict, path: Path, sha256: str, fmt: str, half: bool) -> dict:
    """The export's own metadata: what a user (or dpl predict) needs to run it (the exporter is added by the
    export, an int8 precision by the quantisation)."""
    heads = [{"name": h["name"], "classes": list(h["classes"])} for h in meta.get("heads") or []]
    inp = meta["input"]
    return {"task": meta.get("task", "experts" if heads else "classifier"), "format": fmt,
            "opset": OPSET if fmt == "onnx" else None, "classes": list(meta.get("classes") or []), "heads": heads,
            "outputs": output_names(heads),
            "input": {"name": "images", "dtype": "float16" if half else "float32",
                      "layout": "NCHW", "channels": inp["channels"], "size": inp["size"], "range": "[0, 1]",
                      "normalization": "folded in", "mean": list(inp["mean"]), "std": list(inp["std"])},
            "precision": "float16" if half else "float32",
            "checkpoint": str(path), "checkpoint_sha256": sha256, "arch": meta["arch"].get("name")}


def wrap(model: nn.Module, meta: dict) -> Normalized:
    return Normalized(model, meta["input"]["mean"], meta["input"]["std"], meta.get("heads") or []).eval()


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints its progress on stdout, onnxruntime.quantization advice through logging, torch.jit its
    deprecation (torch 2.10 on: torch.export is its successor) as warnings; dpl's stdout is for results."""
    level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            yield
    finally:
        logging.root.setLevel(level)


def export_onnx(net: Normalized, example: torch.Tensor, out: Path, info: dict) -> str:
    """Write `net` as ONNX at `out` with a dynamic batch axis and dpl's metadata; the exporter used."""
    names = list(info["outputs"])
    try:
        with _quiet(), torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(net, (example,), input_names=["images"], output_names=names,
                                        opset_version=OPSET, dynamo=True,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
            program.save(str(out))
        exporter = "dynamo"
    except Exception as e:     # noqa: BLE001  any failure of torch.export: the TorchScript-based exporter
        dynamo_error = first_line(e)
        try:
            with _quiet(), torch.no_grad():
                torch.onnx.export(net, (example,), str(out), input_names=["images"], output_names=names,
                                  opset_version=OPSET, dynamo=False,
                                  dynamic_axes={n: {0: "batch"} for n in ["images", *names]})
        except Exception as e2:     # noqa: BLE001
            raise DplError(f"the model does not export to ONNX (dynamo: {dynamo_error}; TorchScript-based: "
                           f"{first_line(e2)})") from None
        exporter = "torchscript"
    set_info(out, {**info, "exporter": exporter})
    return exporter


def set_info(path: Path, info: dict) -> None:
    """Write dpl's metadata into an ONNX file (replacing what metadata it had)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(info)
    model.producer_name = "dpl"
    onnx.save(model, str(path))


def export_torchscript(net: Normalized, example: torch.Tensor, out: Path, info: dict) -> str:
    with torch.no_grad(), _quiet():
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.save(traced, str(out), _extra_files={TORCHSCRIPT_META: json.dumps({**info, "exporter": "trace"})})
    return "trace"


def quantize_int8(src: Path, out: Path) -> None:
    """onnxruntime's dynamic int8 quantisation: weights of Conv, MatMul and Gemm as int8, activations quantised
    per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _quiet():
            quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8)
    except Exception as e:     # noqa: BLE001
        raise DplError(f"onnxruntime cannot quantise the model ({first_line(e)})") from None


# ---- running an export ------------------------------------------------------------------------------------------

@dataclass
class Exported:
    """An exported model, loaded to run: `logits(uint8 images)` -> one float32 array per output."""

    path: Path
    info: dict
    run: object                     # callable: float array (N, C, S, S) -> list of arrays

    def logits(self, images: torch.Tensor) -> list[np.ndarray]:
        x = images.float().div_(255)
        if self.info["input"]["dtype"] == "float16":
            x = x.half()
        return [np.asarray(o, dtype=np.float32) for o in self.run(x)]


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:     # noqa: BLE001  onnxruntime's own exceptions (InvalidGraph, NotImplemented, ...)
        raise DplError(f"{path}: onnxruntime cannot load it ({first_line(e)})") from None


def onnx_info(path: Path) -> dict:
    """The dpl metadata of an ONNX file, refused when it has none (a foreign or corrupt file)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:     # noqa: BLE001  protobuf's DecodeError and friends
        raise DplError(f"{path}: not an ONNX model ({first_line(e)})") from None
    found = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in found:
        raise DplError(f"{path}: an ONNX model without dpl's metadata (its input size, normalisation and classes): "
                       "export it with dpl export")
    try:
        info = json.loads(found[META_KEY])
        info["input"]["channels"], info["input"]["size"]     # noqa: B018  the keys predict needs
    except (ValueError, KeyError, TypeError):
        raise DplError(f"{path}: its dpl metadata is unreadable") from None
    return info


def load_onnx(path: Path) -> Exported:
    info = onnx_info(path)
    session = _session(path)
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor):
        try:
            return session.run(None, {name: x.numpy()})
        except Exception as e:     # noqa: BLE001
            raise DplError(f"{path}: onnxruntime cannot run it ({first_line(e)})") from None

    return Exported(path, info, run)


def load_torchscript(path: Path) -> Exported:
    """A TorchScript export dpl just wrote (never a user's file: that would unpickle)."""
    extra = {TORCHSCRIPT_META: ""}
    with _quiet():
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)

    def run(x: torch.Tensor):
        with torch.inference_mode():
            out = module(x)
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]

    return Exported(path, json.loads(extra[TORCHSCRIPT_META]), run)


# ---- the parity check -------------------------------------------------------------------------------------------

def compare(reference: torch.Tensor, exported: np.ndarray, labels: torch.Tensor, atol: float = ATOL,
            rtol: float = RTOL) -> dict:
    """The exported model's logits against the checkpoint's on the same images: the largest |difference|, the
    share of images with the same top-1, the images whose top-1 changed with a clear margin (> 2 x tolerance),
    and both top-1 accuracies where the labels are known (-1: unknown)."""
    ref = reference.double()
    got = torch.from_numpy(exported).double()
    diff = (got - ref).abs()
    tolerance = atol + rtol * ref.abs()
    top2 = ref.topk(min(2, ref.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, -1]
    changed = ref.argmax(1) != got.argmax(1)
    known = labels >= 0
    return {"images": len(ref), "max_abs_diff": float(diff.max()), "within_tolerance": bool((diff <= tolerance).all()),
            "top1_agreement": float((~changed).double().mean()),
            "clear_changes": int((changed & (margin > 2 * (atol + rtol * top2[:, 0].abs()))).sum()),
            "top1_checkpoint": float((ref.argmax(1)[known] == labels[known]).double().mean()) if known.any() else None,
            "top1_export": float((got.argmax(1)[known] == labels[known]).double().mean()) if known.any() else None,
            "atol": atol, "rtol": rtol}
