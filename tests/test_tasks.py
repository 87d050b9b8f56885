"""The task table (core/tasks.py, cli/tasks/): dispatch by the data or artifact given, one wording for options
that do not apply, and --val with --keep best for every task that trains (detector, MIL, WSDDN)."""

import ast
import json
from pathlib import Path

import pytest

from conftest import assert_refused, dpl
from dpl.core import tasks

ROOT = Path(__file__).resolve().parents[1]
SCENES = ["--data", "scenes:digits", "--canvas", "32", "--objects", "1,2", "--object-size", "10,16", "--scenes", "32",
          "--test-scenes", "12"]
CPU = ["--device", "cpu"]


def test_the_table_says_which_options_apply_to_which_task():
    classifier, detector = tasks.TASKS[tasks.CLASSIFIER], tasks.TASKS[tasks.DETECTOR]
    assert tasks.applies("teach", classifier, "label_smoothing") and not tasks.applies("teach", detector, "label_smoothing")
    assert tasks.applies("teach", detector, "canvas") and not tasks.applies("teach", classifier, "canvas")
    assert tasks.applies("teach", detector, "epochs") and tasks.applies("teach", classifier, "epochs")   # everyone's
    # a command's own row wins over the rule for every command
    assert tasks.applies("distill", tasks.TASKS[tasks.EXPERTS], "head_names")
    assert not tasks.applies("distill", classifier, "head_names")
    assert not tasks.applies("label", detector, "tau") and tasks.applies("distill", detector, "tau")
    # `only`: a label folder is measured with a handful of options, not even --batch-size
    assert not tasks.applies("eval", tasks.TASKS[tasks.LABELS], "batch_size")
    assert tasks.refused("teach", detector, {"label_smoothing": "--label-smoothing", "epochs": "--epochs"}) == \
        "--label-smoothing cannot apply to a detector"
    assert tasks.refused("teach", detector, {"epochs": "--epochs"}) is None
    assert {t.best for t in tasks.TASKS.values() if t.best} == {"top1", "map", "bag_auc", "corloc", "pck"}


def test_every_task_a_command_serves_has_a_handler_and_a_row():
    from dpl.cli.tasks import HANDLERS

    assert set(HANDLERS) == set(tasks.TASKS)
    for task, commands in HANDLERS.items():
        for where in commands.values():
            module, function = where.split(":")
            assert (ROOT / "cli" / "tasks" / f"{module}.py").is_file(), where
            assert f"def {function}(ctx" in (ROOT / "cli" / "tasks" / f"{module}.py").read_text(), where


def test_no_command_module_branches_on_the_task():
    """The commands hand their task to cli/tasks (no is_box_spec / is_mil / is_detector / ... of their own)."""
    deciders = {"is_box_spec", "is_mil", "is_wsddn", "is_detector", "is_box_folder", "checkpoint_task", "TASK"}
    for path in (ROOT / "cli").glob("*.py"):
        named = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, (ast.Attribute, ast.Name))}
        assert not named & deciders, (path.name, named & deciders)


@pytest.mark.parametrize("argv, words", [
    (["teach", "--objects", "1,2", "--epochs", "1"], ["--objects cannot apply to a classifier"]),
    (["teach", *SCENES, "--label-smoothing", "0.1", "--arch", "frcnn-cnn-s"], ["--label-smoothing cannot apply to a detector"]),
    (["teach", "--keep", "best", "--epochs", "1"], ["--keep best", "give --val"]),
])
def test_options_outside_the_task_are_refused_in_one_line_and_nothing_is_written(tmp_path, argv, words):
    out = tmp_path / "m.safetensors"
    assert_refused(dpl(*argv, *CPU, "-o", out), *words)
    assert list(tmp_path.iterdir()) == []


def test_an_artifact_of_a_task_a_command_does_not_serve_is_refused_by_name(teacher, tmp_path):
    mil_model = tmp_path / "mil.safetensors"
    r = dpl("mil", "--data", "digits", "--target-class", "3", "--bags", "8", "--test-bags", "4", "--bag-size", "4",
            "--arch", "cnn-s", "--epochs", "1", "--bag-batch", "4", *CPU, "-o", mil_model)
    assert r.code == 0, r
    assert_refused(dpl("label", mil_model, "-o", tmp_path / "l"), "a multiple-instance (MIL) model",
                   "not a classifier", "dpl label serves those")
    assert_refused(dpl("eval", mil_model, "--linear-probe"), "--linear-probe cannot apply to a multiple-instance")
    assert_refused(dpl("eval", teacher, mil_model), str(teacher), "a classifier, not a multiple-instance")
    assert not (tmp_path / "l").exists()


def _validated(path: Path) -> tuple[dict, list[dict]]:
    meta = json.loads(dpl("info", path, "--json").stdout)
    return meta["weights"], [h for h in meta["history"] if any(k.startswith("val_") for k in h)]


@pytest.mark.parametrize("task, argv", [
    ("map", ["teach", *SCENES, "--arch", "frcnn-cnn-s", "--epochs", "3", "--batch-size", "16", "--val", "8"]),
    ("bag_auc", ["mil", "--data", "digits", "--target-class", "0", "--bags", "40", "--test-bags", "8", "--bag-size", "5",
                 "--arch", "cnn-s", "--epochs", "3", "--bag-batch", "8", "--val", "10"]),
    ("corloc", ["wsddn", *SCENES, "--arch", "cnn-s", "--hidden", "16", "--epochs", "3", "--batch-size", "8",
                "--val", "6"]),
    ("pck", ["teach", "--data", "poses", "--canvas", "40", "--pose-scale", "0.8,0.95", "--poses", "40", "--test-poses",
             "8", "--arch", "cnn-s", "--epochs", "3", "--batch-size", "16", "--optimizer", "adamw", "--lr", "0.002",
             "--val", "8"]),
])
def test_val_and_keep_best_work_for_every_task(tmp_path, task, argv):
    out = tmp_path / "m.safetensors"
    r = dpl(*argv, "--keep", "best", *CPU, "-o", out)
    assert r.code == 0, r
    weights, validated = _validated(out)
    assert len(validated) == 3 and all(f"val_{task}" in h for h in validated)
    figures = [h[f"val_{task}"] for h in validated]
    best = max(range(3), key=lambda i: (figures[i] if figures[i] is not None else -1, -i))
    assert weights["kept"] == "best" and weights["metric"] == task
    assert weights["epoch"] == weights["best_epoch"] == validated[best]["epoch"]
    assert weights["best"][f"val_{task}"] == figures[best]
    shown = dpl("info", out)
    assert f"best validation {task}" in shown.stdout + shown.stderr
