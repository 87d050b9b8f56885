"""dpl export: a classifier checkpoint as ONNX or TorchScript, checked against the checkpoint before it is written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import common
from .tasks import dispatch
from ..core import tasks


@common.guarded
def export_command(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="The checkpoint to export (a classifier or a multi-head student).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The file to write (MODEL.onnx, MODEL.pt).", rich_help_panel=common.Panel.OUTPUT)],
    format: Annotated[str, typer.Option("--format", help="onnx (run by onnxruntime) or torchscript.", rich_help_panel=common.Panel.OUTPUT)] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="ONNX: dynamic int8 quantisation (onnxruntime.quantization: int8 weights, activations quantised at run time); its accuracy change on the check images is printed.", rich_help_panel=common.Panel.OUTPUT)] = False,
    half: Annotated[bool, typer.Option("--half", help="float16 weights and input (refused where onnxruntime's CPU kernels cannot run the model in float16).", rich_help_panel=common.Panel.OUTPUT)] = False,
    data_spec: Annotated[str | None, typer.Option("--data", autocompletion=common.complete_data, help="The images the export is checked on. \\[default: the test split of the checkpoint's data; else its training data]", rich_help_panel=common.Panel.DATA)] = None,
    check: Annotated[int, typer.Option(min=1, help="How many images the export is checked on.", rich_help_panel=common.Panel.DATA)] = 1000,
    download: common.Download = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size of the check.", rich_help_panel=common.Panel.RUN)] = 256,
    force: common.Force = False,
    as_json: common.Json = False,
    config: common.Config = None,
):
    """Export a checkpoint as ONNX or TorchScript, checked before it is written.

    The exported model takes float32 images, pixels / 255 in [0, 1], N x C x S x S with any N, and normalises them
    itself; its metadata hold the classes, the input and where it came from. Before anything is written, the
    export runs (ONNX: in onnxruntime) on the check images and must give the checkpoint's logits within
    1e-3 + 1e-3 |logit| and its top-1; the figures are printed. Nothing is written when it does not."""
    options = dict(locals())
    return dispatch("export", tasks.of_checkpoint(checkpoint), ctx, options, checkpoint)
