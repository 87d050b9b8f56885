"""The CLI side of the task table (core/tasks.py): the code that serves each command for each task.

teach, label, distill and eval find the task of what they were given, and `dispatch` refuses the options that do not
apply to it (core.tasks.refused: one wording everywhere) and calls the task's handler. A handler is
`handler(ctx, options)`, `options` being the command's parameters by name. The handler modules import torch; this
one does not, so `dpl COMMAND -h` stays instant.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import typer

from .. import common
from ...core import DplError, tasks

# task -> command -> "module:function" in this package
HANDLERS: dict[str, dict[str, str]] = {
    tasks.CLASSIFIER: {"teach": "classifier:teach", "label": "classifier:label", "distill": "classifier:distill",
                       "eval": "classifier:evaluate", "export": "deploy:export", "predict": "deploy:predict"},
    tasks.EXPERTS: {"label": "classifier:label", "distill": "classifier:distill_experts",
                    "eval": "classifier:evaluate", "export": "deploy:export", "predict": "deploy:predict"},
    tasks.DETECTOR: {"teach": "detector:teach", "label": "detector:label", "distill": "detector:distill",
                     "eval": "detector:evaluate", "predict": "deploy:predict"},
    tasks.MIL: {"eval": "mil:evaluate"},
    tasks.KEYPOINTS: {"teach": "keypoints:teach", "label": "keypoints:label", "distill": "keypoints:distill",
                      "eval": "keypoints:evaluate", "predict": "deploy:predict"},
    tasks.WSDDN: {"label": "wsddn:label", "eval": "wsddn:evaluate"},
    tasks.VIDEO_POSE: {"label": "video:label", "distill": "video:distill", "eval": "video:evaluate"},
    tasks.LANDMARKS: {"eval": "video:evaluate"},
    tasks.LABELS: {"eval": "classifier:label_quality"},
    tasks.BOX_LABELS: {"eval": "detector:box_label_quality"},
    tasks.KEYPOINT_LABELS: {"eval": "keypoints:label_quality"},
}


# why a command serves only some tasks, said after its refusal of the others
UNSERVED = {"export": " (an export holds the model's logits; a detector's box decoding and non-maximum suppression "
                      "and a keypoint model's heatmap decoding are not exported)"}


def dispatch(command: str, task: tasks.Task, ctx: typer.Context, options: dict, about: Path | str | None = None):
    """Hand `command` to `task`'s handler, after refusing what does not apply to it (`about`: the artifact or data
    the refusal names first)."""
    prefix = f"{about}: " if about is not None else ""
    task = tasks.on_data(command, task, options.get("data_spec"))
    where = HANDLERS[task.name].get(command)
    if where is None:
        served = [tasks.TASKS[name].title for name, by in HANDLERS.items()
                  if command in by and name not in (tasks.LABELS, tasks.BOX_LABELS, tasks.KEYPOINT_LABELS)]
        raise DplError(f"{prefix}{task.title}, not {', '.join(served[:-1])} or {served[-1]}: "
                       f"dpl {command} serves those{UNSERVED.get(command, '')}")
    given = common.given_options(ctx)
    message = tasks.refused(command, task, given)
    if message:
        raise DplError(prefix + message)
    if command not in ("teach", "predict"):      # teach's task is its data's; predict takes any images
        tasks.check_data(task, options.get("data_spec"), about)
        if "arch" in given:         # a default --arch is checked by the handler, after its own checks
            tasks.check_arch(options["arch"], task.name, command, about)
    module, function = where.split(":")
    return getattr(import_module(f".{module}", __package__), function)(ctx, options)
