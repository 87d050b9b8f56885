"""The `dpl` command."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from importlib import import_module
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

# The commands as `dpl -h` lists them: name -> (module of this package, its command function or, for plot, its
# Typer app). A command's module is imported, and its options read from the function's signature, only when that
# command is run, completed or asked for its help (see Commands).
COMMANDS = {
    "teach": ("teach", "teach_command"), "label": ("label", "label_command"), "distill": ("distill", "distill_command"),
    "hint": ("hint", "hint_command"), "pretrain": ("pretrain", "pretrain_command"), "semi": ("semi", "semi_command"),
    "mil": ("mil", "mil_command"), "wsddn": ("wsddn", "wsddn_command"), "eval": ("evaluate", "eval_command"),
    "landmarks": ("landmarks", "landmarks_command"),
    "export": ("export", "export_command"), "predict": ("predict", "predict_command"),
    "info": ("info", "info_command"), "pack": ("pack", "pack_command"), "report": ("report", "report_command"),
    "plot": ("plot", "plot_app"),
}


def command_object(name: str):
    module, attr = COMMANDS[name]
    return getattr(import_module(f".{module}", __package__), attr)


def summary(name: str) -> str:
    """A command's first docstring paragraph (plot: its app's), which `dpl -h` lists."""
    obj = command_object(name)
    doc = obj.info.help if isinstance(obj, typer.Typer) else inspect.getdoc(obj)
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


def unwrapped(doc: str) -> str:
    """A docstring with each paragraph on one line, for rich to wrap at the terminal's width (it keeps a
    docstring's own line breaks, which then cut its lines in two)."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


def build(name: str):
    """The click command of `name`, as typer makes it from the function's signature."""
    obj = command_object(name)
    if isinstance(obj, typer.Typer):
        obj.info.epilog = epilog(name)
        return typer.main.get_group(obj)
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    one.command(name, help=unwrapped(inspect.getdoc(obj) or ""), epilog=epilog(name))(obj)
    return typer.main.get_command(one)


class Built(Mapping):
    """Command name -> click command, built on its first lookup."""

    def __init__(self):
        self.built = {}

    def __getitem__(self, name: str):
        if name not in self.built:
            if name not in COMMANDS:
                raise KeyError(name)
            self.built[name] = build(name)
        return self.built[name]

    def __iter__(self):
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class Commands(TyperGroup):
    """dpl's group of commands, each built only when it is looked up (typer reads up to 66 options from a
    command's signature: building all thirteen took some 40 ms, half of what `dpl -h` may cost). Its own help and
    the completion of a command name list the commands by their summaries alone."""

    def __init__(self, **attrs):
        super().__init__(**attrs)
        self.commands = Built()
        self.listing = False

    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        # typer imports pydantic (some 60 ms) to coerce the first option value that is not a bool, and the group's
        # own flags (--help, --install-completion, --show-completion) default to None: every `dpl COMMAND -h` would
        # pay for it. False means the same to their callbacks.
        for param in self.get_params(ctx):
            if getattr(param, "is_flag", False) and param.default is None:
                param.default = False
        return super().parse_args(ctx, args)

    def get_command(self, ctx, name: str):
        if self.listing and name in COMMANDS:
            return TyperCommand(name=name, help=summary(name))
        return self.commands.get(name)

    def format_help(self, ctx, formatter) -> None:
        for param in self.get_params(ctx):      # typer's two-line help of this flag, in one
            if param.name == "show_completion":
                param.help = "Print the completion script, to install it yourself."
        self.listing = True
        try:
            return super().format_help(ctx, formatter)
        finally:
            self.listing = False

    def shell_complete(self, ctx, incomplete: str):
        self.listing = True
        try:
            return super().shell_complete(ctx, incomplete)
        finally:
            self.listing = False


app = typer.Typer(
    name="dpl",
    cls=Commands,
    # the --install-completion row says how to turn on shell completion
    help="Distillation and pseudo-labeling pipelines from the command line.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# The README's tour lines, shown at the end of each subcommand's --help.
EXAMPLES = {
    "teach": ["dpl teach --data digits --arch cnn-m --epochs 15 -o t0.safetensors",
              "dpl teach --data digits --labeled-per-class 10 --arch cnn-s --epochs 100 --batch-size 32 -o t0.safetensors",
              "dpl teach --data imagefolder:photos/labeled --resize 28 --randaugment 2,9 --val-per-class 10 --keep best "
              "-o t.safetensors",
              "dpl teach --data scenes:fashion-mnist --labeled 100 --arch frcnn-cnn-m --epochs 40 -o det.safetensors",
              "dpl teach --data poses --arch cnn-m --epochs 30 --optimizer adamw --lr 0.002 -o pose.safetensors"],
    "label": ["dpl label t0.safetensors -o labels0/",
              "dpl label t.safetensors --data imagefolder:photos/unlabeled -o labels/",
              "dpl label t0.safetensors --topk 5 --tau 2 -o labels-top5/",
              "dpl label det.safetensors -o boxes/"],
    "distill": ["dpl distill --labels labels0/ --arch cnn-m --randaugment 2,9 --dropout 0.3 --stochastic-depth 0.2 "
                "-o s1.safetensors",
                "dpl distill --teacher t.safetensors --arch cnn-s --tau 4 -o kd.safetensors",
                "dpl distill --init stage1.safetensors --teacher t.safetensors --arch fitnet-thin --tau 4 -o student.safetensors",
                "dpl distill --teacher t.safetensors --arch cnn-s --alpha 0 --feature-loss crd -o crd.safetensors",
                "dpl distill --labels labels-t4/ --alpha 1 --loss dkd --arch cnn-s -o dkd.safetensors",
                "dpl distill --labels labels-digits/ --labels labels-fashion/ --head-names digits,fashion -o two-heads.safetensors",
                "dpl distill --teacher det.safetensors --arch frcnn-cnn-s --feature-loss hint -o chen.safetensors",
                "dpl distill --labels boxes/ --arch frcnn-cnn-s --scale-jitter 0.8,1.2 --randaugment 2,9 -o det-s1.safetensors"],
    "hint": ["dpl hint --teacher t.safetensors --arch fitnet-thin -o stage1.safetensors",
             "dpl distill --init stage1.safetensors --teacher t.safetensors --arch fitnet-thin --tau 4 -o student.safetensors"],
    "pretrain": ["dpl pretrain --task rotation --data digits --resize 24 -o rotation.safetensors",
                 "dpl eval rotation.safetensors --linear-probe --knn 20",
                 "dpl teach --data digits --resize 24 --labeled-per-class 10 --init rotation.safetensors -o tuned.safetensors",
                 "dpl pretrain --task peclr --data poses --poses 2000 -o peclr.safetensors",
                 "dpl teach --data poses --poses 2000 --labeled 20 --init peclr.safetensors -o kp.safetensors"],
    "semi": ["dpl semi --algorithm flexmatch --data fashion-mnist --labeled-per-class 100 --epochs 19 -o flex.safetensors",
             "dpl semi --algorithm fixmatch --data digits --labeled-per-class 10 --batch-size 16 -o fix.safetensors"],
    "mil": ["dpl mil --data fashion-mnist --target-class 0 --bags 200 --pooling attention --arch cnn-s -o mil.safetensors",
            "dpl mil --data bagfolder:slides --resize 64 --pooling gated -o slides.safetensors",
            "dpl eval mil.safetensors --json"],
    "wsddn": ["dpl wsddn --data scenes:fashion-mnist --scenes 1000 --arch cnn-s --epochs 20 -o wsddn.safetensors",
              "dpl eval wsddn.safetensors",
              "dpl label wsddn.safetensors --present 0.5 -o boxes/"],
    "landmarks": ["dpl landmarks --data clips --landmarks 10 -o lm.safetensors"],
    "eval": ["dpl eval t0.safetensors --json", "dpl eval t0.safetensors s1.safetensors", "dpl eval labels0/",
             "dpl eval det.safetensors chen.safetensors",
             "dpl eval kd-seed1.safetensors kd-seed2.safetensors --seeds"],
    "export": ["dpl export s1.safetensors -o s1.onnx", "dpl export s1.safetensors -o s1-int8.onnx --int8",
               "dpl export s1.safetensors -o s1.pt --format torchscript"],
    "predict": ["dpl predict s1.onnx --data imagefolder:photos/new -o predictions.csv --topk 3",
                "dpl predict s1.safetensors --data digits:test -o predictions.jsonl"],
    "info": ["dpl info t0.safetensors", "dpl info --layers cnn-m --data digits", "dpl info --archs"],
    "pack": ["dpl pack photos/labeled -o shards/ --shard-size 10000", "dpl teach --data tar:shards -o t.safetensors"],
    "report": ["dpl report demo -o report.html", "make -C recipes/noisy-student report"],
    "plot": ["dpl plot curves t0.safetensors s1.metrics.jsonl -o curves", "dpl plot lineage s3.safetensors -o lineage",
             "dpl plot labels labels0/ -o labels --json", "dpl plot bag mil.safetensors --bag 0 --bag 1 -o bags"],
}


def epilog(command: str) -> str | None:
    lines = EXAMPLES[command]
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines) if lines else None


def versions() -> list[str]:
    """dpl's version and those of the libraries its artifacts and numbers depend on (from the packages' metadata:
    importing torch would take seconds)."""
    from importlib import metadata

    return [f"{name} {metadata.version(name)}" for name in ("dpl", "torch", "torchvision")]


def show_version(value: bool) -> None:
    if value:
        print("\n".join(versions()))
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=show_version,
                                          help="Print the versions of dpl, torch and torchvision.")] = False,
):
    pass


def main() -> None:
    """The console script: typer's usage errors (an unknown option, a missing or malformed value) become one
    line like dpl's own errors, exit 2, with the hint to ask for help; the rest is typer's."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("dpl: aborted\n")
        code = 1
    except Exception as e:                      # typer's private click raises these; no public name for them
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        sys.stderr.write(usage_error_line(e) + "\n")
        code = e.exit_code
    sys.exit(code if isinstance(code, int) else 0)


def usage_error_line(e) -> str:
    message = " ".join(e.format_message().split()).rstrip(".")   # "did you mean" suggestions stay, on the same line
    ctx = getattr(e, "ctx", None)
    hint = f" (try '{ctx.command_path} -h')" if ctx is not None else ""
    return f"dpl: error: {message[:1].lower() + message[1:]}{hint}"


if __name__ == "__main__":
    main()
