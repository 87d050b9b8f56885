"""dpl hint: FitNets stage 1, a student's guided layer learns a teacher's hint layer through a regressor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import common
from ..core import tasks

artifacts, data, train = common.artifacts, common.data, common.train
hints = common.lazy("dpl.core.methods.hint")


@common.guarded
@common.training_options(epochs=10, without=("compile",))
def hint_command(
    output: common.Output,
    teacher: Annotated[Path, typer.Option(help="Teacher checkpoint whose hint layer the student learns.", rich_help_panel=common.Panel.TEACHERS)],
    hint_layer: Annotated[str | None, typer.Option(help="Teacher module path (dpl info --layers). \\[default: the middle of the teacher]", rich_help_panel=common.Panel.HINTS)] = None,
    guided_layer: Annotated[str | None, typer.Option(help="Student module path. \\[default: the middle of the student]", rich_help_panel=common.Panel.HINTS)] = None,
    data_spec: common.InheritedData = None,
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: common.Resize = None,
    arch: common.Arch = "fitnet-thin",
    randaugment: common.RandAugment = None,
    crop: common.Crop = True,
    flip: common.Flip = True,
    init: common.Init = None,
    **shared,
):
    """FitNets stage 1: a student's guided layer learns a teacher's hint layer.

    Stage 2 is `dpl distill --init OUT --teacher TEACHER --tau ...` (hints need no labels, so without a
    partition every sample of the split is used)."""
    options = common.options_of(locals())
    state = common.resume_spec("hint", options, shared["resume"], shared["save_every"])
    cfg, noise = common.train_config(options), common.noise_options(options)
    model_opts = common.model_options(options, tasks.CLASSIFIER, "hint")
    opts = hints.HintOptions(hint_layer=hint_layer, guided_layer=guided_layer)
    common.check_output(output, shared["force"], options)
    sinks = common.run_records(output, shared["tensorboard"])
    rt = train.runtime(shared["device"], workers=shared["workers"])
    teacher_meta = artifacts.read_header(teacher, kind="checkpoint").meta
    spec, split, size = common.data_of(teacher_meta, data_spec, common.partition(options), resize, teacher)
    ds = data.load(spec, partition=split, part=part or "all", download=download, resize=size, check_all=True)
    common.say_inherited("hints on", f"the teacher {teacher}", teacher_meta, data_spec, common.partition(options),
                         resize, ds)
    with common.TrainingProgress("hint", sinks) as progress:
        result = hints.hint(ds, teacher, model_opts, noise, opts, cfg, rt, on_progress=progress, resume=state)
    common.write_result(output, result, state, shared["keep_state"])
