"""What every subcommand shares: options, --config files, error handling, progress, output checks.

Imports: `dpl -h`, `dpl COMMAND -h` and shell completion load every command module, so no cli/ module imports
torch, torchvision, matplotlib or numpy when it is loaded (tests/test_startup.py checks it). A dpl.core module
that imports them is bound with `lazy` instead of `from`-imported: `train = lazy("dpl.core.engine.train")` stands
for the module and imports it on the first attribute access, so call sites stay `train.runtime(...)`; its classes
and functions are reached through it, never imported by name at module level (a function may import them inside).
What help and completion show (architectures, sources, losses, ...) comes from the torch-free dpl.core.catalog;
dpl.core itself and dpl.core.tasks import as usual.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..core import DplError, Interrupted, RunError, catalog, tasks, textfiles


class _Lazy:
    """Stands for a module until its first attribute is read (or set: a test's monkeypatch reaches the module).
    Not a sys.modules entry (importlib.util.LazyLoader's are, and `inspect.getmodule`, which torch calls while it
    imports, would then load them all in the middle of that import)."""
    __slots__ = ("_name", "_module")

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_module", None)

    def _load(self):
        if self._module is None:
            object.__setattr__(self, "_module", importlib.import_module(self._name))
        return self._module

    def __getattr__(self, attr: str):
        return getattr(self._load(), attr)

    def __setattr__(self, attr: str, value) -> None:
        setattr(self._load(), attr, value)

    def __delattr__(self, attr: str) -> None:
        delattr(self._load(), attr)

    def __dir__(self):
        return dir(self._load())

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy(name: str):
    """The module `name` (absolute), imported on its first use: see the note at the top."""
    return _Lazy(name)


artifacts, data, models = lazy("dpl.core.artifacts"), lazy("dpl.core.data"), lazy("dpl.core.models")
augment, records = lazy("dpl.core.data.augment"), lazy("dpl.core.reporting.records")
distributed, train = lazy("dpl.core.engine.distributed"), lazy("dpl.core.engine.train")
methods_common = lazy("dpl.core.methods.common")     # ModelOptions, NoiseOptions, ValOptions
progress_bar, tables = lazy("rich.progress"), lazy("rich.table")

# Off a terminal (logs, make), tables keep their full width instead of 80 columns.
# Not a terminal: 160 columns, or more where $COLUMNS says so (a table written to a file keeps long paths whole).
_COLUMNS = os.environ.get("COLUMNS", "")
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else max(160, int(_COLUMNS) if _COLUMNS.isdigit() else 0))


def fail(message: str, code: int = 2):
    # One plain line: rich would wrap a long message over several.
    sys.stderr.write(f"dpl: error: {message}\n")
    raise typer.Exit(code)


def guarded(func):
    """Bad input -> one line and exit 2; a failed run -> exit 1; Ctrl-C -> exit 130. Never a traceback. Input too
    large for the machine (MemoryError) or nested without end (RecursionError) is bad input that no check caught
    before: one line naming the command, exit 2."""
    command = ("plot " if func.__module__.endswith(".plot") else "") + func.__name__.removesuffix("_command")

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DplError as e:
            fail(str(e), 2)
        except RunError as e:
            fail(str(e), 1)
        except Interrupted as e:
            sys.stderr.write(f"dpl: interrupted by {e}\n")
            raise typer.Exit(128 + e.signum) from None
        except KeyboardInterrupt:
            sys.stderr.write("dpl: interrupted; no output was written\n")
            raise typer.Exit(130) from None
        except MemoryError:
            fail(f"dpl {command}: out of memory: an input, a count or --batch-size is too large for this machine")
        except RecursionError:
            fail(f"dpl {command}: an input is nested too deeply to be read")
        except RuntimeError as e:       # torch's allocators say so with a RuntimeError (OutOfMemoryError on a GPU)
            tried = re.search(r"tried to allocate ([\d.]+ ?[KMGT]?i?B|\d+ bytes)", str(e))
            if not (type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(e)):
                raise
            fail(f"dpl {command}: out of memory{f' (tried to allocate {tried[1]})' if tried else ''}: an input, a "
                 f"count or --batch-size is too large for this machine")
        finally:
            _notes.clear()
            distributed.teardown()
    return wrapper


# ---- help panels -----------------------------------------------------------------------------------

class Panel:
    """The panels that `dpl COMMAND -h` groups options in (typer's rich_help_panel), shown in the order of each
    panel's first option in the signature. An option names its panel where it is declared: here for the shared
    options, in place for a command's own."""
    OUTPUT = "Output"
    DATA = "Data"
    SCENES = "Scenes"               # scenes:SOURCE, data with boxes built from a classification source
    POSES = "Poses"                 # poses[:SOURCE], synthetic figures with keypoints
    CLIPS = "Clips"                 # clips[:SOURCE], moving:SOURCE: synthetic clips
    BAGS = "Bags"                   # bags built from a classification source (dpl mil)
    MODEL = "Model"
    OPTIMIZATION = "Optimization"
    NOISE = "Noise"
    VALIDATION = "Validation"
    RECORDS = "Records"
    RUN = "Run"
    # a command's own
    TEACHERS = "Teachers"           # label, distill, hint
    LABELS = "Labels"               # what dpl label stores
    LOSS = "Loss"                   # distill's loss between student and teacher
    FEATURE_LOSS = "Feature loss"   # distill's term between layers
    PSEUDO_LABELS = "Pseudo-labels" # distill, semi: how pseudo-labeled samples are kept and weighed
    HINTS = "Hints"
    PRETEXT = "Pretext"
    SIMCLR = "SimCLR"
    PECLR = "PeCLR"
    MIL = "MIL"
    WSDDN = "WSDDN"
    DETECTORS = "Detectors"
    MEASURES = "Measures"           # dpl eval's figures beyond the default ones


# ---- --config -------------------------------------------------------------------------------------

def load_config(ctx: typer.Context, param: typer.CallbackParam, value: Path | None):
    """Feed a YAML file's keys (option names) to ctx.default_map; explicit flags still win."""
    if value is None:
        return value
    try:
        loaded = textfiles.read_yaml(value, "--config file")
    except DplError as e:
        fail(f"--config {e}")
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        fail(f"--config {value}: expected a mapping of option names to values, found {type(loaded).__name__}")
    known = {p.name for p in ctx.command.params}
    config = {}
    for key, v in loaded.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known or name == "config":
            fail(f"--config {value}: unknown option {str(key)[:80]!r} for dpl {ctx.command.name}")
        config[name] = ",".join(map(str, v)) if name == "randaugment" and isinstance(v, list) else v
    ctx.default_map = {**(ctx.default_map or {}), **config}
    return value


Config = Annotated[Path | None, typer.Option(
    "--config", is_eager=True, callback=load_config, help="YAML file of option values (keys are option names); explicit flags override it.", rich_help_panel=Panel.RUN)]

# ---- data options ---------------------------------------------------------------------------------

def complete_data(incomplete: str) -> list[str]:
    """--data NAME[:SPLIT]: the built-in sources, and the prefixes of image files."""
    names = [s for s in catalog.SOURCES if ":" not in s] + [f"{k}:" for k in catalog.FILE_SOURCES]
    return [n for n in names if n.startswith(incomplete)]


def complete_arch(incomplete: str) -> list[str]:
    """The registry's names, and timm's once `timm:` is typed (only then is timm, and torch, imported)."""
    if incomplete.startswith(catalog.TIMM):
        try:
            import timm
        except ImportError:
            return []
        rest = incomplete[len(catalog.TIMM):]
        return [catalog.TIMM + name for name in timm.list_models() if name.startswith(rest)]
    return [name for name in (*catalog.ARCHS, catalog.TIMM) if name.startswith(incomplete)]


def completer(choices):
    """A shell-completion function offering the `choices` (names from dpl.core.catalog) that start with what was
    typed."""
    return lambda incomplete: [c for c in choices if c.startswith(incomplete)]


DataSpec = Annotated[str, typer.Option("--data", autocompletion=complete_data, help="Training data: NAME[:SPLIT] (digits, fashion-mnist, cifar10, imagefolder:PATH, tar:PATH, ...).", rich_help_panel=Panel.DATA)]
InheritedData = Annotated[str | None, typer.Option("--data", autocompletion=complete_data, help="Data: NAME[:SPLIT]. \\[default: the data the teacher (or the labels) was made from]", rich_help_panel=Panel.DATA)]
Resize = Annotated[int | None, typer.Option(
    min=1, help="Resize the images to SxS once, before anything else (e.g. digits' 8x8 for a pretext grid, or for a "
                "backbone pretrained at S); image files are decoded with their shorter side at S, centre-cropped. "
                "Recorded in the checkpoint. \\[default: the size of the checkpoint or labels the command reads; "
                "else, image files: the median shorter side of a sample of them, at most 224]", rich_help_panel=Panel.DATA)]

LabeledPerClass = Annotated[int | None, typer.Option(
    min=1, help="Labeled/unlabeled partition: this many labeled samples per class (stratified, from --split-seed).", rich_help_panel=Panel.DATA)]
Labeled = Annotated[int | None, typer.Option(
    min=1, help="Labeled/unlabeled partition: this many labeled samples in all, spread evenly over the classes.", rich_help_panel=Panel.DATA)]
SplitSeed = Annotated[int, typer.Option(help="Seed of the labeled/unlabeled partition.", rich_help_panel=Panel.DATA)]
Part = Annotated[str | None, typer.Option(
    help="Which part of a partitioned split to use: labeled, unlabeled or all. \\[default: the command's own]", rich_help_panel=Panel.DATA)]
Download = Annotated[bool, typer.Option(help="Allow torchvision to download a dataset that is not on disk.", rich_help_panel=Panel.DATA)]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.", rich_help_panel=Panel.RUN)]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the trained model (worth it for long GPU runs).", rich_help_panel=Panel.RUN)]
Workers = Annotated[int | None, typer.Option(
    min=0, help="DataLoader worker processes that gather training batches from host memory, a few batches ahead "
                "(into pinned memory on CUDA), and that decode streamed image files. 0: the images live on the device "
                "and batches are gathered there; streamed files are decoded inline. \\[default: 0, or up to 4 when "
                "the images would fill more than half of the GPU's free memory; streamed files: the cores less one "
                "(at most 8) with a GPU, none on a CPU of 2 cores, else a quarter of the cores]",
    show_default=False, rich_help_panel=Panel.RUN)]
Stream = Annotated[bool | None, typer.Option(
    "--stream/--in-memory", help="Image files (imagefolder:, tar:): decode them on demand in DataLoader workers, or "
    "all at once into memory. \\[default: in memory when the decoded pixels fit in 1 GiB]", show_default=False, rich_help_panel=Panel.DATA)]
# ---- training options (teach, distill, hint, pretrain) ----------------------------------------------

Arch = Annotated[str, typer.Option(autocompletion=complete_arch, help="Architecture from the registry, or timm:NAME for any of timm's (dpl info --archs lists them).", rich_help_panel=Panel.MODEL)]
Epochs = Annotated[int, typer.Option(min=1, help="Training epochs.", rich_help_panel=Panel.OPTIMIZATION)]
BatchSize = Annotated[int, typer.Option(min=1, help="Batch size.", rich_help_panel=Panel.OPTIMIZATION)]
Lr = Annotated[float, typer.Option(min=0.0, help="Peak learning rate (after warmup; cosine decay to 0).", rich_help_panel=Panel.OPTIMIZATION)]
Optimizer = Annotated[str, typer.Option(help="sgd (Nesterov momentum) or adamw.", rich_help_panel=Panel.OPTIMIZATION)]
Momentum = Annotated[float, typer.Option(min=0.0, max=1.0, help="SGD momentum.", rich_help_panel=Panel.OPTIMIZATION)]
WeightDecay = Annotated[float, typer.Option(min=0.0, help="Weight decay (not applied to biases and norms).", rich_help_panel=Panel.OPTIMIZATION)]
Warmup = Annotated[float, typer.Option(min=0.0, help="Linear learning-rate warmup, in epochs; at most a fifth of the run (said when shortened).", rich_help_panel=Panel.OPTIMIZATION)]
Seed = Annotated[int, typer.Option(help="Random seed of the run.", rich_help_panel=Panel.OPTIMIZATION)]
Ema = Annotated[float | None, typer.Option(
    help="Keep an exponential moving average of the weights with this decay (e.g. 0.999): it is what validation "
         "measures and what the checkpoint holds.", rich_help_panel=Panel.OPTIMIZATION)]
RandAugment = Annotated[str | None, typer.Option(help="RandAugment noise as N,M: N ops per image at magnitude M (0-30).", rich_help_panel=Panel.NOISE)]
Crop = Annotated[bool, typer.Option(help="Random crop after padding by 1/8 of the image side.", rich_help_panel=Panel.NOISE)]
Flip = Annotated[bool, typer.Option(help="Random horizontal flip (only for data whose classes survive it).", rich_help_panel=Panel.NOISE)]
Dropout = Annotated[float, typer.Option(min=0.0, max=0.99, help="Dropout before the classifier.", rich_help_panel=Panel.NOISE)]
StochasticDepth = Annotated[float, typer.Option(min=0.0, max=0.99, help="Drop probability of the last residual block (linear from the first).", rich_help_panel=Panel.NOISE)]
Init = Annotated[Path | None, typer.Option(help="Start from this checkpoint's weights.", rich_help_panel=Panel.MODEL)]
Pretrained = Annotated[bool, typer.Option(
    "--pretrained", help="Start from torchvision's ImageNet weights for this architecture, read from the torch hub "
                         "cache ($TORCH_HOME/hub/checkpoints; downloaded when absent); for timm:NAME, timm's weights "
                         "(model.safetensors) from the Hugging Face cache ($HF_HUB_CACHE; downloaded when absent, "
                         "unless HF_HUB_OFFLINE is set).", rich_help_panel=Panel.MODEL)]


# ---- records: the metrics log, TensorBoard, validation -----------------------------------------------

LogEvery = Annotated[int, typer.Option(
    min=1, help="Steps between the running-mean records of the metrics log (OUT.metrics.jsonl, written beside the "
                "output with a record per epoch) and of the progress bar; on a GPU also how often the loss is "
                "checked for NaN.", rich_help_panel=Panel.RECORDS)]
TensorBoard = Annotated[Path | None, typer.Option(
    "--tensorboard", help="Also write the metrics log's figures to this folder for TensorBoard "
                          "(needs the tensorboard package: pip install 'dpl\\[tensorboard]').", rich_help_panel=Panel.RECORDS)]
Val = Annotated[int | None, typer.Option(
    "--val", min=1, help="Hold out this many labeled samples (images; bags for dpl mil; stratified by class where "
                         "there are classes; never trained on) and measure the model on them in eval mode every "
                         "--val-every epochs.", rich_help_panel=Panel.VALIDATION)]
ValPerClass = Annotated[int | None, typer.Option(min=1, help="Like --val, with this many samples of each class.", rich_help_panel=Panel.VALIDATION)]
ValEvery = Annotated[int, typer.Option(min=1, help="Epochs between validations (the last epoch is always validated).", rich_help_panel=Panel.VALIDATION)]
Keep = Annotated[str, typer.Option(
    help="The weights written: last (the default: where the cosine schedule ends, the same with or without a "
         "validation set) or best (the epoch of the best validation figure: top-1; a detector's mAP, a MIL "
         "model's bag AUC, WSDDN's CorLoc; needs --val or --val-per-class). "
         "The checkpoint records both epochs' validation figures.", rich_help_panel=Panel.VALIDATION)]


def holdout(o: dict) -> data.Holdout:
    return data.Holdout(per_class=o["val_per_class"], total=o["val"], seed=o["split_seed"])


def val_options(o: dict, metric: str = "top1") -> methods_common.ValOptions:
    """--val-every and --keep; `metric`: the task's figure that --keep best maximizes (core.tasks.Task.best)."""
    return methods_common.ValOptions(every=o["val_every"], keep=o["keep"], metric=metric)


def run_records(output: Path, tensorboard: Path | None) -> list:
    """The sinks of a training run's records: the metrics log beside the output, and TensorBoard if asked
    (refused here, before any work, when the package is missing)."""
    sinks = [records.MetricsLog(records.log_path(output))]
    if tensorboard is not None:
        sinks.append(records.TensorBoardLog(tensorboard))
    return sinks


def train_config(o: dict) -> train.TrainConfig:
    """The schedule from a command's options (its locals())."""
    cfg = train.TrainConfig(epochs=o["epochs"], batch_size=o["batch_size"], lr=o["lr"], optimizer=o["optimizer"],
                            momentum=o["momentum"], weight_decay=o["weight_decay"],
                            warmup_epochs=o["warmup_epochs"], seed=o["seed"], log_every=o["log_every"], ema=o["ema"])
    if cfg.epochs and cfg.warmup < cfg.warmup_epochs:
        say(f"dpl: --warmup-epochs {cfg.warmup_epochs:g} shortened to {cfg.warmup:g}, a fifth of the "
            f"{cfg.epochs}-epoch run, so that the learning rate decays before the run ends")
    return cfg


def model_options(o: dict, task: str, command: str) -> methods_common.ModelOptions:
    """The model a training command builds, its --arch checked against the task it trains (tasks.check_arch)."""
    tasks.check_arch(o["arch"], task, command)
    return methods_common.ModelOptions(arch=o["arch"], dropout=o.get("dropout", 0.0), stochastic_depth=o.get("stochastic_depth", 0.0),
                             init=o.get("init"), pretrained=o.get("pretrained", False))


def noise_options(o: dict) -> methods_common.NoiseOptions:
    return methods_common.NoiseOptions(randaugment=augment.parse_randaugment(o["randaugment"]), crop=o["crop"], flip=o["flip"])


def partition(o: dict) -> data.Partition:
    return data.Partition(labeled_per_class=o["labeled_per_class"], labeled=o["labeled"], seed=o["split_seed"])


def data_of(meta: dict, data_spec: str | None, split: data.Partition, resize: int | None,
            about: Path | str = "the artifact") -> tuple[str, data.Partition, int | None]:
    """Default to the data (partition, --resize) an artifact (`about`) was made from, so pipelines name the same
    samples."""
    made = meta.get("data", {})
    if str(made.get("spec", "")).partition(":")[0] in ("scenes", "coco"):     # data with boxes (core.scenes)
        raise DplError(f"{about}: made from {made['spec']}, data with boxes: a {meta.get('task', 'detection')} "
                       f"model or its pseudo-boxes, not a classifier or its labels")
    if str(made.get("spec", "")).partition(":")[0] == "poses":
        raise DplError(f"{about}: made from {made['spec']}, data with keypoints: a keypoint model or its "
                       f"pseudo-keypoints, not a classifier or its labels")
    same_source = data_spec is None or data.parse_spec(data_spec)[0] == data.parse_spec(made.get("spec", "digits"))[0]
    if data_spec is None:
        data_spec = made.get("spec", "digits")
    # The artifact's partition belongs to its own source: another source (a pool) is not partitioned by it.
    if not split.active and same_source and ("labeled_per_class" in made or "labeled" in made):
        split = data.Partition(labeled_per_class=made.get("labeled_per_class"), labeled=made.get("labeled"),
                               seed=made.get("split_seed", 0))
    resize = resize or made.get("resize")
    if resize is None and data.is_image_files(data_spec) and "input" in meta:
        resize = meta["input"]["size"]       # image files are decoded at the size the model takes
    return data_spec, split, resize


def say_inherited(verb: str, source: str, meta: dict, data_spec: str | None, split_given: data.Partition,
                  resize_given: int | None, ds: data.Dataset) -> None:
    """One stderr line saying what a command took from the artifact it reads (`data_of`): the data, its
    partition, its --resize; or that the artifact's partition was left out, belonging to another source.
    `source` names the artifact ("the teacher t0.safetensors"), `verb` what the command does with the data."""
    made = meta.get("data", {})
    if "spec" not in made:
        return
    made_source = data.parse_spec(made["spec"])[0]
    made_split = data.Partition(labeled_per_class=made.get("labeled_per_class"), labeled=made.get("labeled"),
                                seed=made.get("split_seed", 0))
    if data_spec is not None and data.parse_spec(data_spec)[0] != made_source:
        if made_split.active and not split_given.active:
            say(f"dpl: the partition of {source} ({partition_flags(made_split)}) belongs to {made['spec']} and is "
                f"not applied to {ds.spec}")
        return
    inherited = [what for what, taken in (("data", data_spec is None),
                                          ("partition", ds.partition.active and not split_given.active),
                                          ("--resize", ds.resized is not None and resize_given is None
                                           and made.get("resize") is not None)) if taken]
    if not inherited:
        return
    part = f", {ds.part} part of {partition_flags(ds.partition)}" if ds.partition.active else ""
    size = f", resized to {ds.resized}" if ds.resized is not None else ""
    taken = " and ".join([", ".join(inherited[:-1]), inherited[-1]] if len(inherited) > 1 else inherited)
    say(f"dpl: {verb} {ds.spec}{part}{size}: {taken} as for {source}")


def partition_flags(split: data.Partition) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in split.describe().items())


def test_split(ds: data.Dataset) -> data.Dataset | None:
    """The source's test split (at the same size), to record test accuracy in the checkpoint; None where there
    is none, or none with labels."""
    if ds.split == "test":
        return None
    try:
        test = data.load(ds.source, default_split="test", resize=ds.resized, channels=ds.shape[0])
    except DplError:
        return None
    return test if (test.labels >= 0).any() else None      # a union pool's test split has no labels


def given(ctx: typer.Context, *names: str) -> list[str]:
    """The options among `names` (parameter names) that the command line or a --config file set, as flags."""
    set_ = given_options(ctx)
    return [set_[n] for n in names if n in set_]


def given_options(ctx: typer.Context) -> dict[str, str]:
    """Every option the command line or a --config file set: parameter name -> flag (--no-crop for a False
    --crop/--no-crop)."""
    def flag(p) -> str:
        off = getattr(p, "secondary_opts", None) and ctx.params.get(p.name) is False
        return p.secondary_opts[0] if off else p.opts[0]
    return {p.name: flag(p) for p in ctx.command.params
            if getattr(ctx.get_parameter_source(p.name), "name", "DEFAULT") != "DEFAULT"}


def own_shards(output: Path, rank: int, world: int, force: bool, resume: bool, check: bool = True) -> list[Path]:
    """The shards of this rank (of every rank, alone) already in the output folder, which must be writable
    (`check`; a head's folder is made inside the output folder, checked once)."""
    from ..core import artifacts
    from ..core.methods.label import shard_files

    if output.exists() and not output.is_dir():
        raise DplError(f"{output} is a file, not a label folder")
    mine = shard_files(output, None if world == 1 else rank) if output.is_dir() else []
    if mine and not (force or resume):
        raise DplError(f"{output} exists with label shards; pass --force to replace them or --resume to complete them")
    if check:
        artifacts.check_writable(output)
    return mine


# ---- output options ---------------------------------------------------------------------------------

Output = Annotated[Path, typer.Option("--output", "-o", help="Where to write the artifact.", rich_help_panel=Panel.OUTPUT)]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.", rich_help_panel=Panel.OUTPUT)]
AllowPartial = Annotated[bool, typer.Option("--allow-partial", help="Accept a label folder that misses shards (an unfinished dpl label): use the shards it has.", rich_help_panel=Panel.DATA)]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.", rich_help_panel=Panel.OUTPUT)]


ResumeFlag = Annotated[bool, typer.Option("--resume", help="Continue from the resume state beside the output (OUT.resume).", rich_help_panel=Panel.RUN)]
SaveEvery = Annotated[int, typer.Option(min=1, help="Write a resume state every N epochs (and on SIGINT/SIGTERM).", rich_help_panel=Panel.RUN)]
KeepState = Annotated[bool, typer.Option("--keep-state", help="Keep the resume state once the run completes.", rich_help_panel=Panel.RUN)]
# Options that do not change what a run computes: a resume state may continue under other values.
NOT_IDENTITY = {"output", "resume", "save_every", "keep_state", "force", "device", "compile", "workers", "config", "ctx",
                "tensorboard"}


# ---- the block of options every training command takes -------------------------------------------------

TRAINING_OPTIONS = {        # parameter name -> (declaration, default)
    "epochs": (Epochs, 30), "batch_size": (BatchSize, 128), "lr": (Lr, 0.05), "optimizer": (Optimizer, "sgd"),
    "momentum": (Momentum, 0.9), "weight_decay": (WeightDecay, 5e-4), "warmup_epochs": (Warmup, 1.0),
    "ema": (Ema, None), "seed": (Seed, 0), "log_every": (LogEvery, 10), "tensorboard": (TensorBoard, None),
    "device": (Device, "auto"), "compile": (Compile, False), "workers": (Workers, None), "force": (Force, False),
    "resume": (ResumeFlag, False), "save_every": (SaveEvery, 1), "keep_state": (KeepState, False),
    "config": (Config, None),
}


def training_options(*, without: tuple[str, ...] = (), **defaults):
    """Give a training command the block of TRAINING_OPTIONS, declared here once. The block is appended to the
    command's signature (typer reads `inspect.signature`) after its own parameters, which replace the block's of
    the same name; `without` leaves options out, keywords set the command's defaults. typer hands the block's
    values to the command's `**shared`; `options_of(locals())`, first thing in its body, gives every option::

        @common.guarded
        @common.training_options(epochs=10, without=("compile",))
        def hint_command(output: common.Output, ..., **shared):
            options = common.options_of(locals())
    """
    unknown = (set(defaults) | set(without)) - set(TRAINING_OPTIONS)
    if unknown:
        raise TypeError(f"not training options: {', '.join(sorted(unknown))}")

    def declare(command):
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in own} | set(without)
        block = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=declared,
                                   default=defaults.get(name, default))
                 for name, (declared, default) in TRAINING_OPTIONS.items() if name not in taken]
        command.__signature__ = signature.replace(parameters=[*own, *block])
        return command
    return declare


def options_of(local: dict) -> dict:
    """A command's options by parameter name, from its locals() at the start of its body: its own parameters and
    the block of training options in `shared` (see training_options)."""
    options = dict(local)
    shared = options.pop("shared", {})
    return {**options, **shared}


def resume_spec(command: str, options: dict, resume: bool, save_every: int) -> train.ResumeSpec:
    """The run's resume state: OUT.resume beside the output, tied to the command and its options."""
    output = Path(options["output"])
    kept = {k: v for k, v in options.items() if k not in NOT_IDENTITY}
    run = {"command": command, **json.loads(json.dumps(kept, default=str))}   # paths as strings
    path = output.with_name(output.name + ".resume")
    if resume and not path.exists():
        raise DplError(f"{path}: no resume state to continue from")
    if not resume and path.exists() and not options.get("force"):
        raise DplError(f"{path} exists from an unfinished run: pass --resume to continue it or --force to start over")
    return train.ResumeSpec(path, run, save_every, resume)


def write_result(output: Path, result, state: train.ResumeSpec, keep_state: bool) -> None:
    """Rank 0 writes the checkpoint (with the command line), then drops the resume state; stdout gets the path."""
    if not distributed.is_main():
        return
    artifacts.save_checkpoint(output, result.model, {**result.meta, "command": command_line()}, result.objective)
    if not keep_state:
        state.path.unlink(missing_ok=True)
    print(output)
    warning = disagreement(result.meta)
    if warning:
        sys.stderr.write(warning + "\n")


def disagreement(meta: dict) -> str | None:
    """A warning when the model scores far worse in eval mode (test split) than on its own training batches:
    typically batch-norm statistics that never settled (a run too short for its schedule)."""
    m, classes = meta.get("metrics", {}), meta.get("num_classes") or 1
    train_acc, test_top1 = m.get("train_acc"), m.get("test_top1")
    if train_acc is None or test_top1 is None or train_acc <= 2 / classes or test_top1 >= train_acc / 2:
        return None
    return (f"dpl: warning: test top-1 {test_top1:.3f} in eval mode is less than half the training accuracy "
            f"{train_acc:.3f}: batch-norm statistics may not have settled (train longer, or check with --val)")


_notes: list[str] = []     # said once the work starts, so that a refused command prints its one line alone


def say(line: str) -> None:
    if distributed.is_main() and line not in _notes:
        _notes.append(line)


def say_source(ds: data.Dataset | None, role: str = "") -> None:
    """A stderr line on how image files are read (in memory or streamed), and what was left out."""
    if ds is None or ds.keys is None or not distributed.is_main():
        return
    size = "x".join(map(str, ds.shape))
    how = (f"streamed: decoded on demand by DataLoader workers ({ds.images.nbytes / 1e6:,.1f} MB if held)"
           if ds.streamed else f"held in memory ({ds.images.nbytes / 1e6:,.1f} MB)")
    say(f"dpl: {role}{ds.spec} ({ds.part}): {len(ds):,} images at {size}, {how}")
    for note in ds.ignored:
        say(f"dpl: ignored {note}")
    if ds.skipped:
        say(f"dpl: skipped {len(ds.skipped)} unreadable image files (first: {ds.skipped[0]}); "
            "they are listed in the output's metadata")


def flush_notes() -> None:
    for line in _notes:
        sys.stderr.write(line + "\n")
    _notes.clear()


def check_output(path: Path, force: bool, inputs: dict | None = None, folder: bool = False) -> None:
    """Refuse an output that exists (without --force), is a folder (a file, for a `folder` output), cannot be
    written, or is one of the command's inputs (`inputs`: its options; every path among their values): --force
    replaces outputs, never inputs."""
    for name, value in (inputs or {}).items():
        if name == "output":
            continue
        for given in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(given, Path) and given.exists() and path.exists() and given.samefile(path):
                raise DplError(f"{path} is also an input (given as {name.replace('_', '-')}); write the output "
                               f"elsewhere")
    if path.exists() and not force:
        raise DplError(f"{path} exists; pass --force to replace it")
    if path.exists() and path.is_dir() != folder:
        raise DplError(f"{path} is {'a file' if folder else 'a folder'}")
    artifacts.check_writable(path)


def command_line() -> list[str]:
    return ["dpl", *sys.argv[1:]]


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, sort_keys=False) + "\n")


# ---- progress -------------------------------------------------------------------------------------

class TrainingProgress:
    """A rich progress bar on stderr fed by the core's progress events, silent when stderr is no terminal;
    the events also go to `sinks` (the run's records, see `run_records`)."""

    def __init__(self, description: str, sinks: list = ()):
        self.description = description
        self.sinks = list(sinks)
        p = progress_bar
        self.bar = p.Progress(p.TextColumn("[bold]{task.description}"), p.BarColumn(), p.MofNCompleteColumn(),
                              p.TextColumn("{task.fields[stats]}"), p.TimeElapsedColumn(), p.TimeRemainingColumn(),
                              console=stderr, disable=not sys.stderr.isatty() or not distributed.is_main(),
                              transient=False)
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        for sink in self.sinks:
            getattr(sink, "close", lambda: None)()
        return self.bar.__exit__(*exc)

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        for sink in self.sinks:
            sink(event)
        if kind in ("start", "total"):
            flush_notes()
        if kind == "start":
            self.task = self.bar.add_task(self.description, total=event["steps"], completed=event.get("step", 0),
                                          stats="")
        elif kind in ("step", "epoch"):
            hidden = ("epoch", "step", "lr", "val_nll", "val_ece", *records.TIMING_FIELDS)
            stats = " ".join(f"{k} {v:.3f}" for k, v in event.items() if isinstance(v, float) and k not in hidden)
            self.bar.update(self.task, completed=event["step"], stats=f"epoch {event['epoch']} {stats}")
        elif kind == "total":
            self.task = self.bar.add_task(self.description, total=event["total"], stats="")
        elif kind == "advance":
            self.bar.update(self.task, advance=event["n"])


def box_quality_table(rows: list[dict], title: str) -> tables.Table:
    """Precision and recall of pseudo-boxes per score threshold (core.boxes.precision_recall's rows)."""
    table = tables.Table(title=title + ": precision and recall at IoU 0.5")
    for col in ("score >=", "precision", "recall", "tp", "fp", "fn"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['threshold']:.2f}", f"{r['precision']:.4f}", f"{r['recall']:.4f}", str(r["tp"]),
                      str(r["fp"]), str(r["fn"]))
    return table


def quality_table(quality: dict, title: str) -> tables.Table:
    table = tables.Table(title=title + f": accuracy {quality['accuracy']:.4f}")
    for col in ("confidence >=", "coverage", "accuracy", "n"):
        table.add_column(col, justify="right")
    for row in quality["thresholds"]:
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        table.add_row(f"{row['threshold']:.2f}", f"{row['coverage']:.4f}", acc, str(row["n"]))
    return table


# ---- data with boxes: scenes built from a classification source, COCO-style JSON (dpl wsddn, dpl detect) ----

def complete_box_data(incomplete: str) -> list[str]:
    """--data of the commands that take boxes: scenes:SOURCE and coco:PATH."""
    names = [f"scenes:{s}" for s in catalog.SOURCES if ":" not in s] + ["coco:"]
    return [n for n in names if n.startswith(incomplete)]


BoxDataSpec = Annotated[str, typer.Option(
    "--data", autocompletion=complete_box_data,
    help="Data with boxes: scenes:SOURCE[:SPLIT] (scenes built from a classification source, e.g. "
         "scenes:fashion-mnist; see --canvas, --objects) or coco:PATH[:SPLIT] (COCO-style JSON: a .json file, or a "
         "folder with annotations.json, or train/ and test/ sub-folders each with one; file_names relative to it).", rich_help_panel=Panel.DATA)]
Canvas = Annotated[int, typer.Option(help="Scenes: the square canvas side, pixels.", rich_help_panel=Panel.SCENES)]
Objects = Annotated[str, typer.Option(help="Scenes: objects per scene, LO,HI (inclusive, drawn uniformly).", rich_help_panel=Panel.SCENES)]
ObjectSize = Annotated[str, typer.Option(help="Scenes: an object's side in pixels, LO,HI (inclusive, drawn uniformly); "
                                              "its box is the tight extent of its pixels.", rich_help_panel=Panel.SCENES)]
MaxOverlap = Annotated[float, typer.Option(help="Scenes: the largest IoU between two objects' squares in a scene.", rich_help_panel=Panel.SCENES)]
Scenes = Annotated[int, typer.Option(help="Scenes: training scenes, from the source's train split.", rich_help_panel=Panel.SCENES)]
TestScenes = Annotated[int, typer.Option(help="Scenes: test scenes, from the source's test split.", rich_help_panel=Panel.SCENES)]
SceneSeed = Annotated[int, typer.Option(help="Scenes: seed of the scenes (each split its own stream of it).", rich_help_panel=Panel.SCENES)]
# poses[:SOURCE], synthetic figures with keypoints (core/data/poses.py); --canvas is shared with scenes
Poses = Annotated[int, typer.Option(help="Poses: training images (one figure each).", rich_help_panel=Panel.POSES)]
TestPoses = Annotated[int, typer.Option(help="Poses: test images.", rich_help_panel=Panel.POSES)]
PoseScale = Annotated[str, typer.Option(help="Poses: the figure's height as a fraction of the canvas, LO,HI.", rich_help_panel=Panel.POSES)]
PoseRotation = Annotated[float, typer.Option(help="Poses: the largest rotation of a whole figure, degrees.", rich_help_panel=Panel.POSES)]
Clutter = Annotated[int, typer.Option(help="Poses: at most this many distractor objects per image.", rich_help_panel=Panel.POSES)]
Truncation = Annotated[float, typer.Option(help="Poses: the probability that a figure is cut by the canvas edge.", rich_help_panel=Panel.POSES)]
PoseSeed = Annotated[int, typer.Option(help="Poses: seed of the figures (each split its own stream of it).", rich_help_panel=Panel.POSES)]
FlipTest = Annotated[bool, typer.Option("--flip-test", help="Keypoints: average each image's heatmaps with those of its mirror image, left and right swapped back (SimpleBaseline's flip test).", rich_help_panel=Panel.POSES)]
PosePart = Annotated[str, typer.Option(help="Poses: what the model learns: whole (every keypoint of the image), or a part expert (DOPE): body (the body joints of the image), hands (crops around each wrist: palm and fingertips), face (a crop around the head).", rich_help_panel=Panel.POSES)]
PartSize = Annotated[int, typer.Option(min=8, max=1024, help="Poses: the side, in pixels, that hand and face crops are resampled to.", rich_help_panel=Panel.POSES)]
ScaleJitter = Annotated[str | None, typer.Option(
    help="Detectors: zoom each image about its centre by a factor drawn in LO,HI (e.g. 0.8,1.2), its boxes alike.", rich_help_panel=Panel.DETECTORS)]
# The option names of a scene spec (a COCO source has its own boxes: they cannot apply to it).
SCENE_OPTIONS = ("canvas", "objects", "object_size", "max_overlap", "scenes", "test_scenes", "scene_seed")


# the options that shape the figures of poses[:SOURCE] (core/data/poses.py)
POSE_OPTIONS = ("canvas", "poses", "test_poses", "pose_scale", "pose_rotation", "clutter", "truncation", "pose_seed")


def pose_spec(o: dict, source: str | None = None):
    """The PoseSpec of the figure options (--canvas, --poses, ...), its figures textured from `source`."""
    from ..core.data.poses import PoseSpec

    scale = float_list(o["pose_scale"], "--pose-scale")
    if len(scale) != 2:
        raise DplError(f"--pose-scale takes LO,HI, got {o['pose_scale']!r}")
    return PoseSpec(source=source, canvas=o["canvas"], count=o["poses"], test_count=o["test_poses"], scale=scale,
                    rotation=o["pose_rotation"], clutter=o["clutter"], truncation=o["truncation"], seed=o["pose_seed"])


# the options that shape synthetic clips, clips[:SOURCE] and moving:SOURCE (core/data/clip_figures.py)
ClipCount = Annotated[int, typer.Option("--clips", min=1, help="Clips: training clips.", rich_help_panel=Panel.CLIPS)]
TestClips = Annotated[int, typer.Option(min=1, help="Clips: test clips.", rich_help_panel=Panel.CLIPS)]
Frames = Annotated[int, typer.Option(min=2, max=256, help="Clips: frames per clip.", rich_help_panel=Panel.CLIPS)]
ClipSeed = Annotated[int, typer.Option(min=0, help="Clips: seed of the clips (each split its own stream of it).", rich_help_panel=Panel.CLIPS)]
ClipCanvas = Annotated[int, typer.Option("--canvas", help="Poses, clips: the square canvas side, pixels.", rich_help_panel=Panel.CLIPS)]
CLIP_OPTIONS = ("canvas", "clip_count", "test_clips", "frames", "clip_seed")


def clip_spec(o: dict):
    """The ClipSpec of the clip options (--canvas, --clips, --test-clips, --frames, --clip-seed)."""
    from ..core.data.clip_figures import ClipSpec

    return ClipSpec(canvas=o["canvas"], count=o["clip_count"], test_count=o["test_clips"], frames=o["frames"],
                    seed=o["clip_seed"])


def float_list(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise DplError(f"{flag} takes numbers separated by commas, got {text!r}") from None


def int_range(text: str, flag: str) -> tuple[int, int]:
    """LO,HI (or one number N for N,N) -> (lo, hi)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise DplError(f"{flag} takes LO,HI (two integers), got {text!r}")
    return int(parts[0]), int(parts[1])


def scene_spec(ctx: typer.Context, data_spec: str, o: dict):
    """The SceneSpec of scenes:SOURCE from the scene options in `o` (a command's locals); None for coco:PATH,
    which refuses any scene option given."""
    from ..core.data import scenes

    kind, source, _ = scenes.parse_box_spec(data_spec)
    if kind != scenes.SCENES:
        refused = given(ctx, *SCENE_OPTIONS)
        if refused:
            raise DplError(f"{data_spec}: COCO data has its own images and boxes; {', '.join(refused)} cannot apply")
        return None
    return scenes.SceneSpec(source=source, canvas=o["canvas"], objects=int_range(o["objects"], "--objects"),
                            scale=int_range(o["object_size"], "--object-size"), max_overlap=o["max_overlap"],
                            scenes=o["scenes"], test_scenes=o["test_scenes"], seed=o["scene_seed"])


# What --seeds ignores when it compares recorded commands (flag -> takes a value): the seed, the output, and
# the options that do not change what a run computes (common.NOT_IDENTITY).
SEED_VARIANTS = {"--seed": True, "--output": True, "-o": True, "--device": True, "--workers": True,
                 "--save-every": True, "--tensorboard": True, "--force": False, "--compile": False,
                 "--keep-state": False, "--resume": False}


def seeds_or_json(o: dict, results: list[dict], commands: list, metrics: tuple[str, ...], what: str) -> bool:
    """eval's --seeds table or --json output of a task's results (`what`: the figures, in the table's title);
    False where neither was asked and the task prints its own table."""
    if o["seeds"]:
        from ..core.reporting.evaluate import seed_groups

        groups = seed_groups(results, commands, SEED_VARIANTS, metrics)
        if o["as_json"]:
            print_json({"results": results, "groups": groups})
        else:
            stderr.print(seed_table(groups, f"{results[0]['data']}: {what}", metrics))
        return True
    if o["as_json"]:
        print_json(results[0] if len(results) == 1 else results)
    return o["as_json"]


def seed_table(groups: list[dict], data_spec: str, metrics: tuple[str, ...]) -> tables.Table:
    """A row per group of runs that differ only in their seed (core.evaluate.seed_groups): mean ± sample std; a
    group of one run shows its figure alone (one run has no spread), and the caption says so."""
    table = tables.Table(title=f"on {data_spec}, runs grouped by command (mean ± std over seeds)")
    if any(g["n"] == 1 for g in groups):
        table.caption = "n = 1: one run, its figure alone (a spread needs two seeds or more)"
    for col in ("command", "n", "seeds", *metrics):
        table.add_column(col, justify="left" if col in ("command", "seeds") else "right")
    for g in groups:
        table.add_row(" ".join(g["command"]) if g["command"] else g["checkpoints"][0], str(g["n"]),
                      ", ".join("-" if s is None else str(s) for s in g["seeds"]),
                      *(f"{g[f'{m}_mean']:.4f}" + ("" if g["n"] == 1 else f" ± {g[f'{m}_std']:.4f}") for m in metrics))
    return table
