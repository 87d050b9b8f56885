"""The `dpl` command."""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Annotated

import typer

from .distill import distill_command
from .evaluate import eval_command
from .hint import hint_command
from .info import info_command
from .label import label_command
from .mil import mil_command
from .pack import pack_command
from .plot import plot_app
from .pretrain import pretrain_command
from .report import report_command
from .semi import semi_command
from .teach import teach_command
from .wsddn import wsddn_command

app = typer.Typer(
    name="dpl",
    help="Distillation and pseudo-labeling pipelines: teach, label, distill, hint, pretrain, eval, plot, report. "
         "Shell completion: dpl --install-completion (bash, zsh, fish, PowerShell), then open a new shell.",
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
              "dpl teach --data scenes:fashion-mnist --labeled 100 --arch frcnn-cnn-m --epochs 40 -o det.safetensors"],
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
                 "dpl teach --data digits --resize 24 --labeled-per-class 10 --init rotation.safetensors -o tuned.safetensors"],
    "semi": ["dpl semi --algorithm flexmatch --data fashion-mnist --labeled-per-class 100 --epochs 19 -o flex.safetensors",
             "dpl semi --algorithm fixmatch --data digits --labeled-per-class 10 --batch-size 16 -o fix.safetensors"],
    "mil": ["dpl mil --data fashion-mnist --target-class 0 --bags 200 --pooling attention --arch cnn-s -o mil.safetensors",
            "dpl mil --data bagfolder:slides --resize 64 --pooling gated -o slides.safetensors",
            "dpl eval mil.safetensors --json"],
    "wsddn": ["dpl wsddn --data scenes:fashion-mnist --scenes 1000 --arch cnn-s --epochs 20 -o wsddn.safetensors",
              "dpl eval wsddn.safetensors",
              "dpl label wsddn.safetensors --present 0.5 -o boxes/"],
    "eval": ["dpl eval t0.safetensors --json", "dpl eval t0.safetensors s1.safetensors", "dpl eval labels0/",
             "dpl eval det.safetensors chen.safetensors",
             "dpl eval kd-seed1.safetensors kd-seed2.safetensors --seeds"],
    "info": ["dpl info t0.safetensors", "dpl info --layers cnn-m --data digits", "dpl info --archs"],
    "pack": ["dpl pack photos/labeled -o shards/ --shard-size 10000", "dpl teach --data tar:shards -o t.safetensors"],
    "report": ["dpl report demo -o report.html", "make -C recipes/noisy-student report"],
    "plot": ["dpl plot curves t0.safetensors s1.metrics.jsonl -o curves", "dpl plot lineage s3.safetensors -o lineage",
             "dpl plot labels labels0/ -o labels --json", "dpl plot bag mil.safetensors --bag 0 --bag 1 -o bags"],
}


def epilog(command: str) -> str | None:
    lines = EXAMPLES[command]
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines) if lines else None


for name, command in (("teach", teach_command), ("label", label_command), ("distill", distill_command),
                      ("hint", hint_command), ("pretrain", pretrain_command), ("semi", semi_command),
                      ("mil", mil_command),
                      ("wsddn", wsddn_command),
                      ("eval", eval_command), ("info", info_command), ("pack", pack_command),
                      ("report", report_command)):
    app.command(name, epilog=epilog(name))(command)
plot_app.info.epilog = epilog("plot")
app.add_typer(plot_app, name="plot")


def versions() -> list[str]:
    """dpl's version and those of the libraries its artifacts and numbers depend on."""
    return [f"{name} {metadata.version(name)}" for name in ("dpl", "torch", "torchvision")]


def show_version(value: bool) -> None:
    if value:
        print("\n".join(versions()))
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=show_version,
                                          help="Print the versions of dpl, torch and torchvision, and exit.")] = False,
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
