"""What every subcommand shares: options, --config files, error handling, progress, output checks."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..core import DplError, Interrupted, RunError, artifacts, data, models
from ..core.data import augment
from ..core.engine import distributed, train
from ..core.reporting import records
from ..core.methods.common import ModelOptions, NoiseOptions, ValOptions
from ..core.engine.train import ResumeSpec

# Off a terminal (logs, make), tables keep their full width instead of 80 columns.
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def fail(message: str, code: int = 2):
    # One plain line: rich would wrap a long message over several.
    sys.stderr.write(f"dpl: error: {message}\n")
    raise typer.Exit(code)


def guarded(func):
    """Bad input -> one line and exit 2; a failed run -> exit 1; Ctrl-C -> exit 130. Never a traceback."""
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
        finally:
            _notes.clear()
            distributed.teardown()
    return wrapper


# ---- --config -------------------------------------------------------------------------------------

def load_config(ctx: typer.Context, param: typer.CallbackParam, value: Path | None):
    """Feed a YAML file's keys (option names) to ctx.default_map; explicit flags still win."""
    if value is None:
        return value
    try:
        loaded = yaml.safe_load(Path(value).read_text())
    except OSError as e:
        raise typer.BadParameter(f"{value}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise typer.BadParameter(f"{value}: not valid YAML ({str(e).splitlines()[0]})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise typer.BadParameter(f"{value}: expected a mapping of option names to values")
    known = {p.name for p in ctx.command.params}
    config = {}
    for key, v in loaded.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known or name == "config":
            raise typer.BadParameter(f"{value}: unknown option {key!r} for dpl {ctx.command.name}")
        config[name] = ",".join(map(str, v)) if name == "randaugment" and isinstance(v, list) else v
    ctx.default_map = {**(ctx.default_map or {}), **config}
    return value


Config = Annotated[Path | None, typer.Option(
    "--config", is_eager=True, callback=load_config, help="YAML file of option values (keys are option names); explicit flags override it.")]

# ---- data options ---------------------------------------------------------------------------------

def complete_data(incomplete: str) -> list[str]:
    """--data NAME[:SPLIT]: the built-in sources, and the prefixes of image files."""
    names = [s for s in data.SOURCES if ":" not in s] + [f"{k}:" for k in data.FILE_SOURCES]
    return [n for n in names if n.startswith(incomplete)]


def complete_arch(incomplete: str) -> list[str]:
    return [name for name in models.REGISTRY if name.startswith(incomplete)]


DataSpec = Annotated[str, typer.Option("--data", autocompletion=complete_data, help="Training data: NAME[:SPLIT] (digits, fashion-mnist, cifar10, imagefolder:PATH, tar:PATH, ...).")]
InheritedData = Annotated[str | None, typer.Option("--data", autocompletion=complete_data, help="Data: NAME[:SPLIT]. \\[default: the data the teacher (or the labels) was made from]")]
Resize = Annotated[int | None, typer.Option(
    min=1, help="Resize the images to SxS once, before anything else (e.g. digits' 8x8 for a pretext grid, or for a "
                "backbone pretrained at S); image files are decoded with their shorter side at S, centre-cropped. "
                "Recorded in the checkpoint. \\[default: the size of the checkpoint or labels the command reads; "
                "else, image files: the median shorter side of a sample of them, at most 224]")]

LabeledPerClass = Annotated[int | None, typer.Option(
    min=1, help="Labeled/unlabeled partition: this many labeled samples per class (stratified, from --split-seed).")]
Labeled = Annotated[int | None, typer.Option(
    min=1, help="Labeled/unlabeled partition: this many labeled samples in all, spread evenly over the classes.")]
SplitSeed = Annotated[int, typer.Option(help="Seed of the labeled/unlabeled partition.")]
Part = Annotated[str | None, typer.Option(
    help="Which part of a partitioned split to use: labeled, unlabeled or all. \\[default: the command's own]")]
Download = Annotated[bool, typer.Option(help="Allow torchvision to download a dataset that is not on disk.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the trained model (worth it for long GPU runs).")]
Workers = Annotated[int | None, typer.Option(
    min=0, help="DataLoader worker processes that gather training batches from host memory, a few batches ahead "
                "(into pinned memory on CUDA), and that decode streamed image files. 0: the images live on the device "
                "and batches are gathered there; streamed files are decoded inline. \\[default: 0, or up to 4 when "
                "the images would fill more than half of the GPU's free memory; streamed files: the cores less one "
                "(at most 8) with a GPU, none on a CPU of 2 cores, else a quarter of the cores]",
    show_default=False)]
Stream = Annotated[bool | None, typer.Option(
    "--stream/--in-memory", help="Image files (imagefolder:, tar:): decode them on demand in DataLoader workers, or "
    "all at once into memory. \\[default: in memory when the decoded pixels fit in 1 GiB]", show_default=False)]
# ---- training options (teach, distill, hint, pretrain) ----------------------------------------------

Arch = Annotated[str, typer.Option(autocompletion=complete_arch, help="Architecture from the registry (dpl info --archs lists them).")]
Epochs = Annotated[int, typer.Option(min=1, help="Training epochs.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Batch size.")]
Lr = Annotated[float, typer.Option(min=0.0, help="Peak learning rate (after warmup; cosine decay to 0).")]
Optimizer = Annotated[str, typer.Option(help="sgd (Nesterov momentum) or adamw.")]
Momentum = Annotated[float, typer.Option(min=0.0, max=1.0, help="SGD momentum.")]
WeightDecay = Annotated[float, typer.Option(min=0.0, help="Weight decay (not applied to biases and norms).")]
Warmup = Annotated[float, typer.Option(min=0.0, help="Linear learning-rate warmup, in epochs; at most a fifth of the run (said when shortened).")]
Seed = Annotated[int, typer.Option(help="Random seed of the run.")]
Ema = Annotated[float | None, typer.Option(
    help="Keep an exponential moving average of the weights with this decay (e.g. 0.999): it is what validation "
         "measures and what the checkpoint holds.")]
RandAugment = Annotated[str | None, typer.Option(help="RandAugment noise as N,M: N ops per image at magnitude M (0-30).")]
Crop = Annotated[bool, typer.Option(help="Random crop after padding by 1/8 of the image side.")]
Flip = Annotated[bool, typer.Option(help="Random horizontal flip (only for data whose classes survive it).")]
Dropout = Annotated[float, typer.Option(min=0.0, max=0.99, help="Dropout before the classifier.")]
StochasticDepth = Annotated[float, typer.Option(min=0.0, max=0.99, help="Drop probability of the last residual block (linear from the first).")]
Init = Annotated[Path | None, typer.Option(help="Start from this checkpoint's weights.")]
Pretrained = Annotated[bool, typer.Option(
    "--pretrained", help="Start from torchvision's ImageNet weights for this architecture, read from the torch hub "
                         "cache ($TORCH_HOME/hub/checkpoints; downloaded when absent).")]


# ---- records: the metrics log, TensorBoard, validation -----------------------------------------------

LogEvery = Annotated[int, typer.Option(
    min=1, help="Steps between the running-mean records of the metrics log (OUT.metrics.jsonl, written beside the "
                "output with a record per epoch) and of the progress bar; on a GPU also how often the loss is "
                "checked for NaN.")]
TensorBoard = Annotated[Path | None, typer.Option(
    "--tensorboard", help="Also write the metrics log's figures to this folder for TensorBoard "
                          "(needs the tensorboard package: pip install 'dpl[tensorboard]').")]
Val = Annotated[int | None, typer.Option(
    "--val", min=1, help="Hold out this many labeled samples (stratified, from --split-seed; never trained on) and "
                         "measure the model on them in eval mode every --val-every epochs.")]
ValPerClass = Annotated[int | None, typer.Option(min=1, help="Like --val, with this many samples of each class.")]
ValEvery = Annotated[int, typer.Option(min=1, help="Epochs between validations (the last epoch is always validated).")]
Keep = Annotated[str, typer.Option(
    help="The weights written: last (the default: where the cosine schedule ends, the same with or without a "
         "validation set) or best (the epoch of the best validation top-1; needs --val or --val-per-class). "
         "The checkpoint records both epochs' validation figures.")]


def holdout(o: dict) -> data.Holdout:
    return data.Holdout(per_class=o["val_per_class"], total=o["val"], seed=o["split_seed"])


def val_options(o: dict) -> ValOptions:
    return ValOptions(every=o["val_every"], keep=o["keep"])


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


def model_options(o: dict) -> ModelOptions:
    return ModelOptions(arch=o["arch"], dropout=o.get("dropout", 0.0), stochastic_depth=o.get("stochastic_depth", 0.0),
                             init=o.get("init"), pretrained=o.get("pretrained", False))


def noise_options(o: dict) -> NoiseOptions:
    return NoiseOptions(randaugment=augment.parse_randaugment(o["randaugment"]), crop=o["crop"], flip=o["flip"])


def partition(o: dict) -> data.Partition:
    return data.Partition(labeled_per_class=o["labeled_per_class"], labeled=o["labeled"], seed=o["split_seed"])


def data_of(meta: dict, data_spec: str | None, split: data.Partition,
            resize: int | None) -> tuple[str, data.Partition, int | None]:
    """Default to the data (partition, --resize) an artifact was made from, so pipelines name the same samples."""
    made = meta.get("data", {})
    if str(made.get("spec", "")).partition(":")[0] in ("scenes", "coco"):     # data with boxes (core.scenes)
        raise DplError(f"made from {made['spec']}, data with boxes: a {meta.get('task', 'detection')} model or its "
                       "pseudo-boxes, not a classifier or its labels")
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
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    return [flags[n] for n in names if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") != "DEFAULT"]


# ---- output options ---------------------------------------------------------------------------------

Output = Annotated[Path, typer.Option("--output", "-o", help="Where to write the artifact.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
AllowPartial = Annotated[bool, typer.Option("--allow-partial", help="Accept a label folder that misses shards (an unfinished dpl label): use the shards it has.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")]


ResumeFlag = Annotated[bool, typer.Option("--resume", help="Continue from the resume state beside the output (OUT.resume).")]
SaveEvery = Annotated[int, typer.Option(min=1, help="Write a resume state every N epochs (and on SIGINT/SIGTERM).")]
KeepState = Annotated[bool, typer.Option("--keep-state", help="Keep the resume state once the run completes.")]
# Options that do not change what a run computes: a resume state may continue under other values.
NOT_IDENTITY = {"output", "resume", "save_every", "keep_state", "force", "device", "compile", "workers", "config", "ctx",
                "tensorboard"}


def resume_spec(command: str, options: dict, resume: bool, save_every: int) -> ResumeSpec:
    """The run's resume state: OUT.resume beside the output, tied to the command and its options."""
    output = Path(options["output"])
    kept = {k: v for k, v in options.items() if k not in NOT_IDENTITY}
    run = {"command": command, **json.loads(json.dumps(kept, default=str))}   # paths as strings
    path = output.with_name(output.name + ".resume")
    if resume and not path.exists():
        raise DplError(f"{path}: no resume state to continue from")
    if not resume and path.exists() and not options.get("force"):
        raise DplError(f"{path} exists from an unfinished run: pass --resume to continue it or --force to start over")
    return ResumeSpec(path, run, save_every, resume)


def write_result(output: Path, result, state: ResumeSpec, keep_state: bool) -> None:
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


def check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise DplError(f"{path} exists; pass --force to replace it")
    if path.is_dir():
        raise DplError(f"{path} is a folder")
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
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
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


def box_quality_table(rows: list[dict], title: str) -> Table:
    """Precision and recall of pseudo-boxes per score threshold (core.boxes.precision_recall's rows)."""
    table = Table(title=title + ": precision and recall at IoU 0.5")
    for col in ("score >=", "precision", "recall", "tp", "fp", "fn"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['threshold']:.2f}", f"{r['precision']:.4f}", f"{r['recall']:.4f}", str(r["tp"]),
                      str(r["fp"]), str(r["fn"]))
    return table


def quality_table(quality: dict, title: str) -> Table:
    table = Table(title=title + f": accuracy {quality['accuracy']:.4f}")
    for col in ("confidence >=", "coverage", "accuracy", "n"):
        table.add_column(col, justify="right")
    for row in quality["thresholds"]:
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        table.add_row(f"{row['threshold']:.2f}", f"{row['coverage']:.4f}", acc, str(row["n"]))
    return table


# ---- data with boxes: scenes built from a classification source, COCO-style JSON (dpl wsddn, dpl detect) ----

def complete_box_data(incomplete: str) -> list[str]:
    """--data of the commands that take boxes: scenes:SOURCE and coco:PATH."""
    names = [f"scenes:{s}" for s in data.SOURCES if ":" not in s] + ["coco:"]
    return [n for n in names if n.startswith(incomplete)]


BoxDataSpec = Annotated[str, typer.Option(
    "--data", autocompletion=complete_box_data,
    help="Data with boxes: scenes:SOURCE[:SPLIT] (scenes built from a classification source, e.g. "
         "scenes:fashion-mnist; see --canvas, --objects) or coco:PATH[:SPLIT] (COCO-style JSON: a .json file, or a "
         "folder with annotations.json, or train/ and test/ sub-folders each with one; file_names relative to it).")]
Canvas = Annotated[int, typer.Option(help="Scenes: the square canvas side, pixels.")]
Objects = Annotated[str, typer.Option(help="Scenes: objects per scene, LO,HI (inclusive, drawn uniformly).")]
ObjectSize = Annotated[str, typer.Option(help="Scenes: an object's side in pixels, LO,HI (inclusive, drawn uniformly); "
                                              "its box is the tight extent of its pixels.")]
MaxOverlap = Annotated[float, typer.Option(help="Scenes: the largest IoU between two objects' squares in a scene.")]
Scenes = Annotated[int, typer.Option(help="Scenes: training scenes, from the source's train split.")]
TestScenes = Annotated[int, typer.Option(help="Scenes: test scenes, from the source's test split.")]
SceneSeed = Annotated[int, typer.Option(help="Scenes: seed of the scenes (each split its own stream of it).")]
# The option names of a scene spec (a COCO source has its own boxes: they cannot apply to it).
SCENE_OPTIONS = ("canvas", "objects", "object_size", "max_overlap", "scenes", "test_scenes", "scene_seed")


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


def seed_table(groups: list[dict], data_spec: str, metrics: tuple[str, ...]) -> Table:
    """A row per group of runs that differ only in their seed (core.evaluate.seed_groups): mean ± sample std."""
    table = Table(title=f"on {data_spec}, runs grouped by command (mean ± std over seeds)")
    for col in ("command", "n", "seeds", *metrics):
        table.add_column(col, justify="left" if col in ("command", "seeds") else "right")
    for g in groups:
        table.add_row(" ".join(g["command"]) if g["command"] else g["checkpoints"][0], str(g["n"]),
                      ", ".join("-" if s is None else str(s) for s in g["seeds"]),
                      *(f"{g[f'{m}_mean']:.4f} ± {g[f'{m}_std']:.4f}" for m in metrics))
    return table
