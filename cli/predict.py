"""dpl predict: a model's predictions for a folder of images (or any image source), as CSV or JSON lines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import common
from .tasks import dispatch
from ..core import DplError, tasks


@common.guarded
def predict_command(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="A checkpoint (.safetensors), or a model dpl export wrote (.onnx).")],
    data_spec: Annotated[str, typer.Option("--data", autocompletion=common.complete_data, help="The images: imagefolder:PATH, tar:PATH, or any source NAME[:SPLIT].", rich_help_panel=common.Panel.DATA)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The predictions: a .csv file (a row per image) or .jsonl (a JSON object per line).", rich_help_panel=common.Panel.OUTPUT)],
    topk: Annotated[int, typer.Option(min=1, help="The K most probable classes of each image (of each head).", rich_help_panel=common.Panel.OUTPUT)] = 1,
    resize: common.Resize = None,
    download: common.Download = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Inference batch size.", rich_help_panel=common.Panel.RUN)] = 512,
    device: common.Device = "auto",
    workers: common.Workers = None,
    force: common.Force = False,
    as_json: common.Json = False,
    config: common.Config = None,
):
    """Predict the classes of every image with a checkpoint or an exported ONNX model.

    Image files are decoded as dpl label decodes them, at the model's input size; unreadable ones are skipped and
    listed. Each row holds the image (its file, or its index), the K most probable classes with their
    probabilities (for each head of a multi-head student) and the true class where the source has one. Images/s
    are printed."""
    options = dict(locals())
    if model.suffix.lower() == ".onnx":
        from ..core import deploy

        if not model.is_file():
            raise DplError(f"{model}: no such file")
        task = tasks.TASKS.get(deploy.onnx_info(model).get("task"), tasks.TASKS[tasks.CLASSIFIER])
    else:
        task = tasks.of_checkpoint(model)
    return dispatch("predict", task, ctx, options, model)
