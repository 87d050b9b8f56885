"""dpl wsddn: a weakly supervised detector (WSDDN) learnt from image-level labels (dpl eval measures it, dpl label
writes its pseudo-boxes: see cli/evaluate.py and cli/label.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import common
from ..core import DplError
from ..core.engine import train
from ..core.data.scenes import BoxData, load_boxes, parse_box_spec
from ..core.methods.wsddn import WsddnOptions, train_wsddn


def float_list(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise DplError(f"{flag} takes numbers separated by commas, got {text!r}") from None


@common.guarded
def wsddn_command(
    ctx: typer.Context,
    output: common.Output,
    data_spec: common.BoxDataSpec = "scenes:digits",
    canvas: common.Canvas = 64,
    objects: common.Objects = "1,3",
    object_size: common.ObjectSize = "16,28",
    max_overlap: common.MaxOverlap = 0.1,
    scenes: common.Scenes = 1000,
    test_scenes: common.TestScenes = 300,
    scene_seed: common.SceneSeed = 0,
    download: common.Download = False,
    resize: common.Resize = None,
    proposal_sizes: Annotated[str, typer.Option(
        help="Proposals: square sides as fractions of the image side (a fixed sliding grid, blind to the image).")]
        = "0.25,0.375,0.5",
    proposal_ratios: Annotated[str, typer.Option(help="Proposals: aspect ratios h/w of each size (area kept).")]
        = "0.5,1,2",
    proposal_stride: Annotated[float, typer.Option(help="Proposals: grid step, a fraction of the image side.")] = 0.125,
    roi: Annotated[int, typer.Option(help="RoIAlign output side (on the backbone's last feature map).")] = 4,
    hidden: Annotated[int, typer.Option(help="Width of the two fully connected layers on each region.")] = 256,
    feature_layer: Annotated[str | None, typer.Option(
        help="The backbone layer (module path, dpl info --layers) whose feature map the regions are pooled from. "
             "\\[default: the deepest block at stride <= smallest proposal side / --roi: stride 4 on 64 px]",
        show_default=False)] = None,
    context: Annotated[float, typer.Option(
        help="Also pool each region enlarged by this factor about its centre and give both to the streams (its "
             "surround tells whether the object goes on past the region); 0: the region alone.")] = 0.0,
    spatial: Annotated[float, typer.Option(
        help="Weight of WSDDN's spatial regulariser (Bilen & Vedaldi 2016, sec. 3.3): the features of regions "
             "overlapping a class's top region by IoU >= 0.6 are pulled towards its features. 0: none.")] = 0.0,
    vote: Annotated[float, typer.Option(
        help="Read-out box voting: each top box (and detection) becomes the score-weighted mean of the proposals "
             "overlapping it by at least this IoU, placing it between the grid's positions; 1: the top proposal "
             "as it is. Applies alike to the objectness baseline.")] = 0.2,
    refine: Annotated[int, typer.Option(
        help="OICR-style refinement streams (Tang et al. 2017) on top of WSDDN's two: each learns per-region classes "
             "(background included) from the previous stream's top region of each class present; the read-out is "
             "their mean. 0: WSDDN alone.")] = 0,
    arch: common.Arch = "cnn-s",
    epochs: common.Epochs = 20,
    batch_size: common.BatchSize = 32,
    lr: common.Lr = 2e-3,
    optimizer: common.Optimizer = "adamw",
    momentum: common.Momentum = 0.9,
    weight_decay: common.WeightDecay = 1e-4,
    warmup_epochs: common.Warmup = 1.0,
    log_every: common.LogEvery = 10,
    ema: common.Ema = None,
    tensorboard: common.TensorBoard = None,
    randaugment: common.RandAugment = None,
    crop: common.Crop = True,
    flip: common.Flip = True,
    stochastic_depth: common.StochasticDepth = 0.0,
    init: common.Init = None,
    pretrained: common.Pretrained = False,
    seed: common.Seed = 0,
    device: common.Device = "auto",
    workers: common.Workers = None,
    force: common.Force = False,
    resume: common.ResumeFlag = False,
    save_every: common.SaveEvery = 1,
    keep_state: common.KeepState = False,
    config: common.Config = None,
):
    """Learn a detector from image-level class labels alone (WSDDN, Bilen & Vedaldi 2016): a registry backbone's
    feature map, a fixed multi-scale grid of proposals, RoIAlign, a classification stream (softmax over classes)
    times a detection stream (softmax over regions), summed over regions into image scores trained with a
    multi-label binary cross-entropy. The boxes of the data are never trained on: dpl eval measures CorLoc on
    the training images and mAP on the test images against them, beside the whole-image and objectness-only
    baselines; dpl label writes the top box of each class predicted present as pseudo-boxes."""
    options = dict(locals())
    scene = common.scene_spec(ctx, data_spec, options)
    opts = WsddnOptions(proposal_sizes=float_list(proposal_sizes, "--proposal-sizes"),
                        proposal_ratios=float_list(proposal_ratios, "--proposal-ratios"),
                        proposal_stride=proposal_stride, roi=roi, hidden=hidden, refine=refine,
                        feature_layer=feature_layer, context=context, spatial=spatial, vote=vote)
    state = common.resume_spec("wsddn", options, resume, save_every)
    cfg = common.train_config(options)
    model_opts, noise = common.model_options({**options, "dropout": 0.0}), common.noise_options(options)
    common.check_output(output, force)
    sinks = common.run_records(output, tensorboard)
    rt = train.runtime(device, workers=workers)
    train_data = load_boxes(data_spec, "train", scene, resize=resize, download=download)
    test = _test_data(data_spec, scene, train_data, download)
    say_boxes(train_data, "training ")
    say_boxes(test, "test ")
    with common.TrainingProgress("wsddn", sinks) as progress:
        result = train_wsddn(train_data, model_opts, noise, opts, cfg, rt, test, on_progress=progress, resume=state)
    common.write_result(output, result, state, keep_state)


def _test_data(data_spec: str, scene, train_data: BoxData, download: bool) -> BoxData | None:
    """The test images measured once trained: the test split's (None where the data has none, or is it)."""
    kind, where, split = parse_box_spec(data_spec)
    if (split or "train") == "test":
        return None
    if kind == "coco" and not (Path(where).is_dir() and (Path(where) / "test").is_dir()):
        return None
    return load_boxes(f"{kind}:{where}:test", "test", scene, resize=train_data.shape[1], download=download)


def say_boxes(box: BoxData | None, role: str = "") -> None:
    if box is None:
        return
    counts = box.truth.offsets.diff().float()
    common.say(f"dpl: {role}images {box.spec}: {len(box)} of {'x'.join(map(str, box.shape))}, {len(box.truth.labels):,} "
               f"boxes of {len(box.classes)} classes ({counts.mean():.2f} per image)")
    for note in box.notes:
        common.say(f"dpl: {note}")
