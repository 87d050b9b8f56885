"""dpl semi: online pseudo-labeling (FixMatch, FlexMatch) on a labeled/unlabeled partition."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common
from ..core import DplError, catalog, tasks

augment, data, train = common.augment, common.data, common.train
semi_methods = common.lazy("dpl.core.methods.semi")


@common.guarded
@common.training_options(lr=0.03)
def semi_command(
    output: common.Output,
    algorithm: Annotated[str, typer.Option(
        help=f"{' or '.join(catalog.SEMI_ALGORITHMS)}: one confidence threshold for every class (FixMatch), or "
             "per-class thresholds that follow how much of each class is already predicted confidently (FlexMatch).",
        autocompletion=common.completer(catalog.SEMI_ALGORITHMS), rich_help_panel=common.Panel.PSEUDO_LABELS)] = "fixmatch",
    data_spec: common.DataSpec = "digits",
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    download: common.Download = False,
    resize: common.Resize = None,
    stream: common.Stream = None,
    threshold: Annotated[float, typer.Option(help="Confidence a pseudo-label needs, in (0, 1] (FlexMatch: the "
                                                  "upper bound of its per-class thresholds).", rich_help_panel=common.Panel.PSEUDO_LABELS)] = 0.95,
    mu: Annotated[int, typer.Option(help="Unlabeled samples per labeled sample in each step.", rich_help_panel=common.Panel.PSEUDO_LABELS)] = 7,
    unlabeled_weight: Annotated[float, typer.Option(help="Weight of the pseudo-label term (lambda_u).", rich_help_panel=common.Panel.PSEUDO_LABELS)] = 1.0,
    arch: common.Arch = "cnn-m",
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs; an epoch is one pass over the unlabeled part.", rich_help_panel=common.Panel.OPTIMIZATION)] = 30,
    batch_size: Annotated[int, typer.Option(min=1, help="Labeled samples per step (per rank); the step adds --mu "
                                                        "times as many unlabeled ones, each seen in two views.", rich_help_panel=common.Panel.OPTIMIZATION)] = 64,
    val: common.Val = None,
    val_per_class: common.ValPerClass = None,
    val_every: common.ValEvery = 1,
    keep: common.Keep = "last",
    randaugment: Annotated[str, typer.Option(help="The strong view's RandAugment as N,M: N ops per image at a "
                                                  "magnitude drawn uniformly from 0..M (of 30) each step, FixMatch's "
                                                  "random magnitude (2,20: translations up to 0.3 of the side).", rich_help_panel=common.Panel.NOISE)] = "2,20",
    crop: common.Crop = True,
    flip: common.Flip = True,
    dropout: common.Dropout = 0.0,
    stochastic_depth: common.StochasticDepth = 0.0,
    init: common.Init = None,
    pretrained: common.Pretrained = False,
    **shared,
):
    """Train on a labeled part and the unlabeled rest at once (FixMatch, FlexMatch).

    The model's confident predictions on a weakly noised view are the labels of a strongly noised view."""
    options = common.options_of(locals())
    opts = semi_methods.SemiOptions(algorithm=algorithm, threshold=threshold, mu=mu,
                                    unlabeled_weight=unlabeled_weight, strong=augment.parse_randaugment(randaugment))
    split = common.partition(options)
    if not split.active:
        raise DplError("dpl semi trains on a labeled and an unlabeled part: give --labeled-per-class or --labeled")
    state = common.resume_spec("semi", options, shared["resume"], shared["save_every"])
    cfg, model_opts = common.train_config(options), common.model_options(options, tasks.CLASSIFIER, "semi")
    noise = common.noise_options({**options, "randaugment": None})    # the weak view; the strong one adds opts.strong
    val_opts, held = common.val_options(options), common.holdout(options)
    common.check_output(output, shared["force"], options)
    sinks = common.run_records(output, shared["tensorboard"])
    rt = train.runtime(shared["device"], shared["compile"], workers=shared["workers"])
    load = dict(download=download, resize=resize, stream=stream, workers=shared["workers"])
    labeled_ds = data.load(data_spec, partition=split, part="labeled", check_all=True, **load)
    unlabeled_ds = data.load(data_spec, partition=split, part="unlabeled", check_all=True, **load)
    common.say_source(labeled_ds, "labeled ")
    common.say_source(unlabeled_ds, "unlabeled ")
    labeled_ds, val_ds = data.hold_out(labeled_ds, held)
    with common.TrainingProgress(algorithm, sinks) as progress:
        result = semi_methods.semi(labeled_ds, unlabeled_ds, model_opts, noise, opts, cfg, rt,
                                   common.test_split(labeled_ds), on_progress=progress, resume=state, val=val_ds,
                                   val_opts=val_opts)
    common.write_result(output, result, state, shared["keep_state"])
