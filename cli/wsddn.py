"""dpl wsddn: a weakly supervised detector (WSDDN) learnt from image-level labels (dpl eval measures it, dpl label
writes its pseudo-boxes: see cli/evaluate.py and cli/label.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import common
from ..core import tasks

train, scenes_data, wsddn = common.train, common.lazy("dpl.core.data.scenes"), common.lazy("dpl.core.methods.wsddn")


@common.guarded
@common.training_options(epochs=20, batch_size=32, lr=2e-3, optimizer="adamw", weight_decay=1e-4, without=("compile",))
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
        help="Proposals: square sides as fractions of the image side (a fixed sliding grid, blind to the image).", rich_help_panel=common.Panel.WSDDN)]
        = "0.25,0.375,0.5",
    proposal_ratios: Annotated[str, typer.Option(help="Proposals: aspect ratios h/w of each size (area kept).", rich_help_panel=common.Panel.WSDDN)]
        = "0.5,1,2",
    proposal_stride: Annotated[float, typer.Option(help="Proposals: grid step, a fraction of the image side.", rich_help_panel=common.Panel.WSDDN)] = 0.125,
    roi: Annotated[int, typer.Option(help="RoIAlign output side (on the backbone's last feature map).", rich_help_panel=common.Panel.WSDDN)] = 4,
    hidden: Annotated[int, typer.Option(help="Width of the two fully connected layers on each region.", rich_help_panel=common.Panel.WSDDN)] = 256,
    feature_layer: Annotated[str | None, typer.Option(
        help="The backbone layer (module path, dpl info --layers) whose feature map the regions are pooled from. "
             "\\[default: the deepest block at stride <= smallest proposal side / --roi: stride 4 on 64 px]",
        show_default=False, rich_help_panel=common.Panel.WSDDN)] = None,
    context: Annotated[float, typer.Option(
        help="Also pool each region enlarged by this factor about its centre and give both to the streams (its "
             "surround tells whether the object goes on past the region); 0: the region alone.", rich_help_panel=common.Panel.WSDDN)] = 0.0,
    spatial: Annotated[float, typer.Option(
        help="Weight of WSDDN's spatial regulariser (Bilen & Vedaldi 2016, sec. 3.3): the features of regions "
             "overlapping a class's top region by IoU >= 0.6 are pulled towards its features. 0: none.", rich_help_panel=common.Panel.WSDDN)] = 0.0,
    vote: Annotated[float, typer.Option(
        help="Read-out box voting: each top box (and detection) becomes the score-weighted mean of the proposals "
             "overlapping it by at least this IoU, placing it between the grid's positions; 1: the top proposal "
             "as it is. Applies alike to the objectness baseline.", rich_help_panel=common.Panel.WSDDN)] = 0.2,
    refine: Annotated[int, typer.Option(
        help="OICR-style refinement streams (Tang et al. 2017) on top of WSDDN's two: each learns per-region classes "
             "(background included) from the previous stream's top region of each class present; the read-out is "
             "their mean. 0: WSDDN alone.", rich_help_panel=common.Panel.WSDDN)] = 0,
    arch: common.Arch = "cnn-s",
    val: common.Val = None,
    val_every: common.ValEvery = 1,
    keep: common.Keep = "last",
    randaugment: common.RandAugment = None,
    crop: common.Crop = True,
    flip: common.Flip = True,
    stochastic_depth: common.StochasticDepth = 0.0,
    init: common.Init = None,
    pretrained: common.Pretrained = False,
    **shared,
):
    """Learn a detector from image-level class labels alone (WSDDN).

    WSDDN (Bilen & Vedaldi 2016): a registry backbone's feature map, a fixed multi-scale grid of
    proposals, RoIAlign, a classification stream (softmax over classes) times a detection stream (softmax
    over regions), summed over regions into image scores trained with a multi-label binary cross-entropy.
    The boxes of the data are never trained on: dpl eval measures CorLoc on the training images and mAP on
    the test images against them, beside the whole-image and objectness-only baselines; dpl label writes
    the top box of each class predicted present as pseudo-boxes."""
    options = common.options_of(locals())
    scene = common.scene_spec(ctx, data_spec, options)
    opts = wsddn.WsddnOptions(proposal_sizes=common.float_list(proposal_sizes, "--proposal-sizes"),
                              proposal_ratios=common.float_list(proposal_ratios, "--proposal-ratios"),
                              proposal_stride=proposal_stride, roi=roi, hidden=hidden, refine=refine,
                              feature_layer=feature_layer, context=context, spatial=spatial, vote=vote)
    state = common.resume_spec("wsddn", options, shared["resume"], shared["save_every"])
    cfg = common.train_config(options)
    model_opts = common.model_options({**options, "dropout": 0.0}, tasks.WSDDN, "wsddn")
    noise = common.noise_options(options)
    common.check_output(output, shared["force"], options)
    sinks = common.run_records(output, shared["tensorboard"])
    rt = train.runtime(shared["device"], workers=shared["workers"])
    train_data = scenes_data.load_boxes(data_spec, "train", scene, resize=resize, download=download)
    train_data, val_data = train_data.held_out(val, scene_seed)
    test = _test_data(data_spec, scene, train_data, download)
    say_boxes(train_data, "training ")
    say_boxes(test, "test ")
    with common.TrainingProgress("wsddn", sinks) as progress:
        result = wsddn.train_wsddn(train_data, model_opts, noise, opts, cfg, rt, test, on_progress=progress,
                                   resume=state, val=val_data, val_opts=common.val_options(options, "corloc"))
    common.write_result(output, result, state, shared["keep_state"])


def _test_data(data_spec: str, scene, train_data: scenes_data.BoxData, download: bool) -> scenes_data.BoxData | None:
    """The test images measured once trained: the test split's (None where the data has none, or is it)."""
    kind, where, split = scenes_data.parse_box_spec(data_spec)
    if (split or "train") == "test":
        return None
    if kind == "coco" and not (Path(where).is_dir() and (Path(where) / "test").is_dir()):
        return None
    return scenes_data.load_boxes(f"{kind}:{where}:test", "test", scene, resize=train_data.shape[1], download=download)


def say_boxes(box: scenes_data.BoxData | None, role: str = "") -> None:
    if box is None:
        return
    counts = box.truth.offsets.diff().float()
    common.say(f"dpl: {role}images {box.spec}: {len(box)} of {'x'.join(map(str, box.shape))}, {len(box.truth.labels):,} "
               f"boxes of {len(box.classes)} classes ({counts.mean():.2f} per image)")
    for note in box.notes:
        common.say(f"dpl: {note}")
