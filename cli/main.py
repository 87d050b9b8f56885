"""The `dpl` command."""

from __future__ import annotations

import typer

from .distill import distill_command
from .evaluate import eval_command
from .hint import hint_command
from .info import info_command
from .label import label_command
from .pack import pack_command
from .plot import plot_app
from .pretrain import pretrain_command
from .report import report_command
from .teach import teach_command

app = typer.Typer(
    name="dpl",
    help="Distillation and pseudo-labeling pipelines: teach, label, distill, hint, pretrain, eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("teach")(teach_command)
app.command("label")(label_command)
app.command("distill")(distill_command)
app.command("hint")(hint_command)
app.command("pretrain")(pretrain_command)
app.command("eval")(eval_command)
app.command("info")(info_command)
app.command("pack")(pack_command)
app.command("report")(report_command)
app.add_typer(plot_app, name="plot")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
