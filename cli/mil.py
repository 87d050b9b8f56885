"""dpl mil: attention-based multiple-instance learning on bags of instances labeled only as bags."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common
from ..core import DplError, catalog, tasks

data, train = common.data, common.train
bag_data, mil = common.lazy("dpl.core.data.bags"), common.lazy("dpl.core.methods.mil")

# Options that build bags from a classification source: a bag folder has its own bags.
BUILD_OPTIONS = ("target_class", "bags", "test_bags", "bag_size", "bag_size_std", "bag_seed", "download")


@common.guarded
@common.training_options(epochs=50, lr=2e-3, optimizer="adamw", weight_decay=1e-4, without=("batch_size", "compile"))
def mil_command(
    ctx: typer.Context,
    output: common.Output,
    data_spec: Annotated[str, typer.Option(
        "--data", autocompletion=lambda incomplete: [s for s in [*common.complete_data(incomplete),
                                                                 f"{catalog.BAG_FOLDER}:"] if s.startswith(incomplete)],
        help="A classification source NAME[:SPLIT] to build bags from (with --target-class), or "
             "bagfolder:PATH[:SPLIT]: a folder of bag folders (image files) with labels.csv (bag,label lines, "
             "label 0 or 1) and optionally instances.csv (bag,image,label lines, for evaluation only).", rich_help_panel=common.Panel.DATA)] = "digits",
    target_class: Annotated[str | None, typer.Option(
        help="Built bags: the class (index or name) whose presence makes a bag positive.", rich_help_panel=common.Panel.BAGS)] = None,
    bags: Annotated[int, typer.Option(help="Built bags: training bags from the train split, every other one positive.", rich_help_panel=common.Panel.BAGS)] = 200,
    test_bags: Annotated[int, typer.Option(help="Built bags: test bags from the test split, measured once trained "
                                                "and by dpl eval.", rich_help_panel=common.Panel.BAGS)] = 1000,
    bag_size: Annotated[float, typer.Option(help="Built bags: mean number of instances per bag (sizes drawn from "
                                                 "N(mean, std), rounded, at least 1).", rich_help_panel=common.Panel.BAGS)] = 10.0,
    bag_size_std: Annotated[float, typer.Option(help="Built bags: standard deviation of the bag sizes.", rich_help_panel=common.Panel.BAGS)] = 2.0,
    bag_seed: Annotated[int, typer.Option(help="Built bags: seed of the bags (each split its own stream of it).", rich_help_panel=common.Panel.BAGS)] = 0,
    pooling: Annotated[str, typer.Option(
        help=f"{', '.join(catalog.POOLINGS)}: attention weights softmax(w^T tanh(V h)), gated attention "
             "softmax(w^T (tanh(V h) * sigm(U h))) (Ilse et al. 2018), or the max or mean of instance logits.",
        autocompletion=common.completer(catalog.POOLINGS), rich_help_panel=common.Panel.MIL)] = "attention",
    attention_dim: Annotated[int, typer.Option(min=1, max=65536, help="attention, gated: hidden width of the attention (V, U).", rich_help_panel=common.Panel.MIL)] = 128,
    download: common.Download = False,
    resize: common.Resize = None,
    arch: common.Arch = "cnn-m",
    bag_batch: Annotated[int, typer.Option(min=1,
        help="Bags per step (per rank): their instances go through the encoder together, and the bags' scores are "
             "padded to the largest with a mask.", rich_help_panel=common.Panel.OPTIMIZATION)] = 16,
    val: common.Val = None,
    val_every: common.ValEvery = 1,
    keep: common.Keep = "last",
    randaugment: common.RandAugment = None,
    crop: common.Crop = True,
    flip: common.Flip = True,
    dropout: common.Dropout = 0.0,
    stochastic_depth: common.StochasticDepth = 0.0,
    init: common.Init = None,
    pretrained: common.Pretrained = False,
    **shared,
):
    """Learn a bag classifier from bag labels alone (attention-based MIL).

    An instance encoder from the registry, an attention (or max, mean) pooling over each bag's instances,
    and a binary cross-entropy on the bag labels (Ilse et al. 2018). Bags are built from a classification
    source (positive: holds the target class) or read from a bag folder; dpl eval measures bag AUC and
    accuracy, and the instance AUC of the attention weights."""
    options = common.options_of(locals())
    folder = bag_data.is_folder(data_spec)
    if folder:
        refused = common.given(ctx, *BUILD_OPTIONS)
        if refused:
            raise DplError(f"{data_spec}: a bag folder has its bags and labels; {', '.join(refused)} cannot apply")
        spec = None
    elif target_class is None:
        raise DplError(f"bags built from {data_spec} need --target-class (the class that makes a bag positive)")
    else:
        spec = bag_data.BagSpec(target=target_class, bags=bags, test_bags=test_bags, size=bag_size,
                                size_std=bag_size_std, seed=bag_seed)
    opts = mil.MilOptions(pooling=pooling, attention_dim=attention_dim)
    state = common.resume_spec("mil", options, shared["resume"], shared["save_every"])
    cfg = common.train_config({**options, "batch_size": bag_batch})
    model_opts, noise = common.model_options(options, tasks.MIL, "mil"), common.noise_options(options)
    common.check_output(output, shared["force"], options)
    sinks = common.run_records(output, shared["tensorboard"])
    workers = shared["workers"]
    rt = train.runtime(shared["device"], workers=workers)
    train_bags = bag_data.load(data_spec, spec, resize=resize, download=download, workers=workers)
    test_bags = _test_bags(data_spec, spec, train_bags, download, workers)
    train_bags, val_bags = train_bags.held_out(val, bag_seed)
    _say_bags(train_bags, "training ")
    _say_bags(val_bags, "validation ")
    _say_bags(test_bags, "test ")
    with common.TrainingProgress(f"mil {pooling}", sinks) as progress:
        result = mil.train_mil(train_bags, model_opts, noise, opts, cfg, rt, test_bags, on_progress=progress,
                               resume=state, val=val_bags, val_opts=common.val_options(options, "bag_auc"))
    common.write_result(output, result, state, shared["keep_state"])


def _test_bags(data_spec: str, spec: bag_data.BagSpec | None, train_bags: bag_data.Bags, download: bool,
               workers: int | None) -> bag_data.Bags | None:
    """The test bags measured once trained: the test split's (None where the data has none, or is it)."""
    if train_bags.instances.split == "test":
        return None
    c, size, _ = train_bags.instances.shape
    source = train_bags.instances.source
    if bag_data.is_folder(source):
        root, _ = bag_data.parse_folder_spec(source)
        if not (root / "test").is_dir():
            return None
    else:
        try:
            data.load(source, default_split="test", download=download)
        except DplError:
            return None
    return bag_data.load(source, spec, default_split="test", count=spec.test_bags if spec else None,
                         resize=size if bag_data.is_folder(source) else train_bags.instances.resized,
                         channels=c, download=download, workers=workers)


def _say_bags(bags: bag_data.Bags | None, role: str) -> None:
    if bags is None:
        return
    sizes = bags.sizes.float()
    common.say(f"dpl: {role}bags {bags.spec}: {len(bags)} bags ({int(bags.labels.sum())} positive), "
               f"{int(sizes.sum()):,} instances of {'x'.join(map(str, bags.instances.shape))}, "
               f"{sizes.mean():.1f} ± {sizes.std() if len(bags) > 1 else 0.0:.1f} per bag (min {int(sizes.min())}, "
               f"max {int(sizes.max())})")
    for note in bags.ignored:
        common.say(f"dpl: ignored {note}")
    if bags.instances.skipped:
        common.say(f"dpl: skipped {len(bags.instances.skipped)} unreadable image files (first: "
                   f"{bags.instances.skipped[0]}); they are listed in the output's metadata")
