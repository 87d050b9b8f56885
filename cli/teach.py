"""dpl teach: supervised training of a teacher, with the student-style noise available."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dpl.cli import common
from dpl.core import DplError, artifacts, augment, data, train
from dpl.core.teach import ModelOptions, NoiseOptions, teach

# Option types shared with the other training commands.
Arch = Annotated[str, typer.Option(help="Architecture from the registry (dpl info --archs lists them).")]
Epochs = Annotated[int, typer.Option(min=1, help="Training epochs.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Batch size.")]
Lr = Annotated[float, typer.Option(min=0.0, help="Peak learning rate (after warmup; cosine decay to 0).")]
Optimizer = Annotated[str, typer.Option(help="sgd (Nesterov momentum) or adamw.")]
Momentum = Annotated[float, typer.Option(min=0.0, max=1.0, help="SGD momentum.")]
WeightDecay = Annotated[float, typer.Option(min=0.0, help="Weight decay (not applied to biases and norms).")]
Warmup = Annotated[float, typer.Option(min=0.0, help="Linear learning-rate warmup, in epochs.")]
Seed = Annotated[int, typer.Option(help="Random seed of the run.")]
RandAugment = Annotated[str | None, typer.Option(help="RandAugment noise as N,M: N ops per image at magnitude M (0-30).")]
Crop = Annotated[bool, typer.Option(help="Random crop after padding by 1/8 of the image side.")]
Flip = Annotated[bool, typer.Option(help="Random horizontal flip (only for data whose classes survive it).")]
Dropout = Annotated[float, typer.Option(min=0.0, max=0.99, help="Dropout before the classifier.")]
StochasticDepth = Annotated[float, typer.Option(min=0.0, max=0.99, help="Drop probability of the last residual block (linear from the first).")]
Init = Annotated[Path | None, typer.Option(help="Start from this checkpoint's weights.")]
Pretrained = Annotated[bool, typer.Option(
    "--pretrained", help="Start from torchvision's ImageNet weights for this architecture, read from the torch hub "
                         "cache ($TORCH_HOME/hub/checkpoints; downloaded when absent).")]
Resize = Annotated[int | None, typer.Option(
    min=1, help="Resize the images to SxS once, before anything else (e.g. digits' 8x8 for a pretext grid, "
                "or for a backbone pretrained at S); image files are decoded with their shorter side at S, "
                "centre-cropped. Recorded in the checkpoint. \\[default: image files: the median shorter side "
                "of a sample of them, at most 224]")]


def train_config(epochs, batch_size, lr, optimizer, momentum, weight_decay, warmup_epochs, seed) -> train.TrainConfig:
    return train.TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
                             weight_decay=weight_decay, warmup_epochs=warmup_epochs, seed=seed)


@common.guarded
def teach_command(
    output: common.Output,
    data_spec: Annotated[str, typer.Option("--data", help="Training data: NAME[:SPLIT] (digits, fashion-mnist, cifar10, imagefolder:PATH, ...).")] = "digits",
    labeled_per_class: common.LabeledPerClass = None,
    labeled: common.Labeled = None,
    split_seed: common.SplitSeed = 0,
    part: common.Part = None,
    download: common.Download = False,
    resize: Resize = None,
    stream: common.Stream = None,
    arch: Arch = "cnn-m",
    epochs: Epochs = 30,
    batch_size: BatchSize = 128,
    lr: Lr = 0.05,
    optimizer: Optimizer = "sgd",
    momentum: Momentum = 0.9,
    weight_decay: WeightDecay = 5e-4,
    warmup_epochs: Warmup = 1.0,
    label_smoothing: Annotated[float, typer.Option(min=0.0, max=0.99, help="Label smoothing of the cross-entropy.")] = 0.0,
    randaugment: RandAugment = None,
    crop: Crop = True,
    flip: Flip = True,
    dropout: Dropout = 0.0,
    stochastic_depth: StochasticDepth = 0.0,
    init: Init = None,
    pretrained: Pretrained = False,
    seed: Seed = 0,
    device: common.Device = "auto",
    compile: common.Compile = False,
    workers: common.Workers = None,
    force: common.Force = False,
    resume: common.ResumeFlag = False,
    save_every: common.SaveEvery = 1,
    keep_state: common.KeepState = False,
    config: common.Config = None,
):
    """Train a model on labeled data (the labeled part when a partition is given)."""
    state = common.resume_spec("teach", dict(locals()), resume, save_every)
    cfg = train_config(epochs, batch_size, lr, optimizer, momentum, weight_decay, warmup_epochs, seed)
    noise = NoiseOptions(augment.parse_randaugment(randaugment), crop, flip)
    common.check_output(output, force)
    rt = train.runtime(device, compile, workers=workers)
    split = common.partition(labeled_per_class, labeled, split_seed)
    if resize is None and init is not None and data.is_image_files(data_spec):
        resize = artifacts.read_header(init, kind="checkpoint").meta["input"]["size"]   # image files: the init's size
    ds = data.load(data_spec, partition=split, part=part or ("labeled" if split.active else "all"), download=download,
                   resize=resize, stream=stream, check_all=True, workers=workers)
    common.say_source(ds)
    test = test_split(ds)
    with common.TrainingProgress("teach") as progress:
        result = teach(ds, test, ModelOptions(arch, dropout, stochastic_depth, init, pretrained=pretrained),
                       noise, cfg, rt, label_smoothing, on_progress=progress, resume=state)
    common.write_result(output, result, state, keep_state)


def test_split(ds: data.Dataset) -> data.Dataset | None:
    """The source's test split (at the same size), to record test accuracy in the checkpoint; None where there
    is none."""
    if ds.split == "test":
        return None
    try:
        return data.load(ds.source, default_split="test", resize=ds.resized, channels=ds.shape[0])
    except DplError:
        return None
