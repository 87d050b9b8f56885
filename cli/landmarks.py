"""dpl landmarks: unsupervised object landmarks through conditional image generation (Jakab et al., NeurIPS 2018)
on clips: a frame reconstructed from its K landmarks and another frame's appearance (core/methods/landmarks.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from . import common
from ..core import DplError

train = common.train
clip_data, clip_figures = common.lazy("dpl.core.data.clips"), common.lazy("dpl.core.data.clip_figures")
landmarks = common.lazy("dpl.core.methods.landmarks")

CLIPS, LANDMARKS = "Clips", "Landmarks"       # this command's own help panels
# the options that shape synthetic clips (core/data/clip_figures.ClipSpec)
CLIP_OPTIONS = ("canvas", "clips", "test_clips", "frames", "clutter", "clip_seed")
CLIP_SOURCES = ("clips", "moving", "clipfolder")


@common.guarded
@common.training_options(batch_size=32, lr=0.001, optimizer="adamw", weight_decay=0.0, warmup_epochs=1.0,
                         without=("compile",))
def landmarks_command(
    ctx: typer.Context,
    output: common.Output,
    data_spec: Annotated[str, typer.Option("--data", help="Clips to learn from: clips[:SOURCE][:SPLIT] (figures performing actions, with true keypoints for the evaluation), moving:SOURCE[:SPLIT] or clipfolder:PATH[:SPLIT] (no keypoints: no evaluation).", rich_help_panel=common.Panel.DATA)] = "clips",
    canvas: Annotated[int, typer.Option(help="Clips: the square frame side, pixels (a multiple of 4).", rich_help_panel=CLIPS)] = 64,
    clips: Annotated[int, typer.Option(help="Clips: training clips.", rich_help_panel=CLIPS)] = 400,
    test_clips: Annotated[int, typer.Option(help="Clips: held-out test clips (the regression's error is measured on them).", rich_help_panel=CLIPS)] = 200,
    frames: Annotated[int, typer.Option(help="Clips: frames per clip.", rich_help_panel=CLIPS)] = 16,
    clutter: Annotated[int, typer.Option(help="Clips: at most this many moving distractors per clip.", rich_help_panel=CLIPS)] = 2,
    clip_seed: Annotated[int, typer.Option(help="Clips: seed of the clips (each split its own stream of it).", rich_help_panel=CLIPS)] = 0,
    landmarks_: Annotated[int, typer.Option("--landmarks", min=1, max=256, help="K: landmarks the bottleneck keeps.", rich_help_panel=LANDMARKS)] = 10,
    sigma: Annotated[float, typer.Option(help="Std of the bottleneck's Gaussian maps in [-1, 1] frame coordinates (the paper's 1/sigma^2 = 100: 0.05 of the side).", rich_help_panel=LANDMARKS)] = 0.1,
    width: Annotated[int, typer.Option(min=1, max=1024, help="Width of the encoders' first layer (doubled at each stride 2, at most 8x); the decoder mirrors them.", rich_help_panel=LANDMARKS)] = 16,
    skips: Annotated[bool, typer.Option(help="Also give each decoder stage the source frame's appearance features at its own resolution (U-Net skips from the source only); off: the coarsest map alone, as the paper.", rich_help_panel=LANDMARKS)] = False,
    perceptual: Annotated[Path | None, typer.Option(help="The fixed network of the perceptual term: a dpl classifier checkpoint (e.g. from dpl pretrain on poses), read at its blocks of stride 8 or finer; never trained. \\[default: a fixed random 3-layer conv net drawn from --perceptual-seed]", show_default=False, rich_help_panel=LANDMARKS)] = None,
    perceptual_seed: Annotated[int, typer.Option(help="Seed of the random perceptual net's weights.", rich_help_panel=LANDMARKS)] = 0,
    perceptual_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the perceptual term beside the pixel L1 (0: pixels alone).", rich_help_panel=LANDMARKS)] = 1.0,
    eval_frames: Annotated[int, typer.Option(min=1, help="Evaluation: frames per clip (spread over it) that the linear regression to the body joints is fitted on (training clips) and measured on (test clips).", rich_help_panel=LANDMARKS)] = 4,
    ridge: Annotated[float, typer.Option(min=0.0, help="Evaluation: the regression's ridge on standardised landmark coordinates.", rich_help_panel=LANDMARKS)] = 0.001,
    epochs: Annotated[int, typer.Option(min=0, help="Training epochs (each visits every clip once, as one frame pair); 0 writes the random-initialised model, the evaluation's baseline.", rich_help_panel=common.Panel.OPTIMIZATION)] = 30,
    **shared,
):
    """Learn object landmarks from clips without labels (Jakab et al. 2018).

    Each step reconstructs a frame from K landmarks of it (a soft-argmax of K heatmaps, drawn again as Gaussians)
    and the appearance of another frame of its clip, under a pixel L1 and a perceptual loss of a fixed network. On
    clips with true keypoints a linear regression from the landmarks to the body joints is fitted on training clips
    and its error (a fraction of the figure's size) measured on test clips: said, and kept as the checkpoint's
    regression_error."""
    options = common.options_of(locals())
    options["landmarks"] = options.pop("landmarks_")
    if data_spec.partition(":")[0] not in CLIP_SOURCES:
        raise DplError(f"--data {data_spec}: landmarks are learnt from clips: clips[:SOURCE][:SPLIT], "
                       f"moving:SOURCE[:SPLIT] or clipfolder:PATH[:SPLIT]")
    synthetic = data_spec.partition(":")[0] != "clipfolder"
    refused = [] if synthetic else common.given(ctx, *CLIP_OPTIONS)
    if refused:
        raise DplError(f"{', '.join(refused)} cannot apply to --data {data_spec}: they shape synthetic clips")
    opts = landmarks.LandmarkOptions(landmarks=options["landmarks"], sigma=sigma, width=width, skips=skips,
                                     perceptual=perceptual,
                                     perceptual_seed=perceptual_seed, perceptual_weight=perceptual_weight,
                                     eval_frames=eval_frames, ridge=ridge)
    made = clip_figures.ClipSpec(canvas=canvas, count=clips, test_count=test_clips, frames=frames, clutter=clutter,
                                 seed=clip_seed) if synthetic else None
    state = common.resume_spec("landmarks", options, shared["resume"], shared["save_every"])
    cfg = common.train_config(options)
    common.check_output(output, shared["force"], options)
    sinks = common.run_records(output, shared["tensorboard"])
    rt = train.runtime(shared["device"], workers=shared["workers"])
    data = clip_data.load_clips(data_spec, "train", made)
    for note in data.notes:
        common.say(f"dpl: {note}")
    data, skipped = clip_data.check_length(data, 2, "a target and a source frame")
    if skipped:
        common.say(f"dpl: {skipped}")
    common.say(f"dpl: {data.spec}: {len(data):,} clips of {int(data.lengths.min())}-{int(data.lengths.max())} "
               f"frames at {'x'.join(map(str, data.shape))}")
    evaluation = landmarks.evaluation_clips(data)
    if isinstance(evaluation, str):
        common.say(f"dpl: {evaluation}")
        evaluation = None
    with common.TrainingProgress("landmarks", sinks) as progress:
        result = landmarks.train_landmarks(data, opts, cfg, rt, on_progress=progress, resume=state,
                                           evaluation=evaluation)
    common.flush_notes()
    metrics = result.meta["metrics"]
    if "regression_error" in metrics:
        frames_used = metrics["regression_frames"]
        sys.stderr.write(f"dpl: landmark regression error {metrics['regression_error']:.4f} on "
                         f"{frames_used['test']:,} test frames (mean over labelled body joints of the distance to "
                         f"the truth, a fraction of the figure's size; fitted on {frames_used['fit']:,} training "
                         f"frames, train error {metrics['regression_train_error']:.4f}; the mean pose gives "
                         f"{metrics['mean_pose_error']:.4f})\n")
    common.write_result(output, result, state, shared["keep_state"])
