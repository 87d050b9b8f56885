"""dpl pretrain: self-supervised pretraining of a backbone (rotation, jigsaw, context, SimCLR)."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common
from ..core import catalog, tasks

data, train, pretext = common.data, common.train, common.lazy("dpl.core.methods.pretext")


@common.guarded
@common.training_options(batch_size=256, without=("compile",))
def pretrain_command(
    output: common.Output,
    task: Annotated[str, typer.Option(help=f"Pretext task: {', '.join(catalog.PRETEXT_TASKS)}.",
                                      autocompletion=common.completer(catalog.PRETEXT_TASKS), rich_help_panel=common.Panel.PRETEXT)] = "rotation",
    data_spec: Annotated[str, typer.Option("--data", help="Images to pretrain on (labels are not used): NAME[:SPLIT].", rich_help_panel=common.Panel.DATA)] = "digits",
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: common.Resize = None,
    arch: common.Arch = "cnn-m",
    epochs: Annotated[int, typer.Option(min=0, help="Training epochs; 0 writes the untrained, randomly initialised backbone (the baseline of a probe table).", rich_help_panel=common.Panel.OPTIMIZATION)] = 30,
    head_width: Annotated[int, typer.Option(min=1, max=65536, help="Hidden width of the task's MLP head (SimCLR: of the projection head).", rich_help_panel=common.Panel.PRETEXT)] = 512,
    crop: common.Crop = True,
    flip: common.Flip = True,
    permutations: Annotated[int, typer.Option(help="jigsaw: number of tile permutations (chosen for maximal Hamming distance).", rich_help_panel=common.Panel.PRETEXT)] = 100,
    patch_size: Annotated[int | None, typer.Option(min=1, max=2048, help="jigsaw, context: side the tiles are resized to for the backbone. \\[default: the image size]", rich_help_panel=common.Panel.PRETEXT)] = None,
    color_drop: Annotated[bool, typer.Option(help="context: keep one random colour channel per patch (against chromatic aberration).", rich_help_panel=common.Panel.PRETEXT)] = True,
    temperature: Annotated[float, typer.Option(help="simclr: NT-Xent temperature.", rich_help_panel=common.Panel.SIMCLR)] = 0.5,
    projection_dim: Annotated[int, typer.Option(min=1, max=65536, help="simclr: output width of the projection head.", rich_help_panel=common.Panel.SIMCLR)] = 128,
    crop_scale: Annotated[float, typer.Option(help="simclr: smallest random-resized-crop area, as a fraction of the image.", rich_help_panel=common.Panel.SIMCLR)] = 0.2,
    color_jitter: Annotated[float, typer.Option(help="simclr: colour-jitter strength s (brightness/contrast/saturation 0.8s, hue 0.2s; 0: off).", rich_help_panel=common.Panel.SIMCLR)] = 0.5,
    color_jitter_prob: Annotated[float, typer.Option(help="simclr: probability of colour jitter per view.", rich_help_panel=common.Panel.SIMCLR)] = 0.8,
    grayscale_prob: Annotated[float, typer.Option(help="simclr: probability of grayscale per view (colour images).", rich_help_panel=common.Panel.SIMCLR)] = 0.2,
    blur_prob: Annotated[float | None, typer.Option(help="simclr: probability of Gaussian blur per view. \\[default: 0.5 for images of 64 px and more, else 0]", rich_help_panel=common.Panel.SIMCLR)] = None,
    **shared,
):
    """Pretrain a backbone without labels: rotation, jigsaw, context or SimCLR.

    The checkpoint fine-tunes with `dpl teach --init`."""
    options = common.options_of(locals())
    tasks.check_arch(arch, tasks.CLASSIFIER, "pretrain")
    state = common.resume_spec("pretrain", options, shared["resume"], shared["save_every"])
    cfg = common.train_config(options)
    views = pretext.Views(crop_scale=crop_scale, jitter=color_jitter, jitter_prob=color_jitter_prob,
                          grayscale_prob=grayscale_prob, blur_prob=blur_prob)
    opts = pretext.PretextOptions(task=task, head_width=head_width, crop=crop, flip=flip, permutations=permutations,
                                  patch_size=patch_size, color_drop=color_drop, temperature=temperature,
                                  projection_dim=projection_dim, views=views)
    common.check_output(output, shared["force"], options)
    sinks = common.run_records(output, shared["tensorboard"])
    rt = train.runtime(shared["device"], workers=shared["workers"])
    ds = data.load(data_spec, partition=common.partition(options), part=part or "all", download=download,
                   resize=resize, check_all=True)
    with common.TrainingProgress(f"pretrain {task}", sinks) as progress:
        result = pretext.pretrain(ds, arch, opts, cfg, rt, on_progress=progress, resume=state)
    common.write_result(output, result, state, shared["keep_state"])
