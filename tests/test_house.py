"""The house the methods live in: the loss registry through the CLI, options that cannot apply refused, one
layer-tap utility, objectives as peers, and the README's tour kept true."""

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import assert_refused, dpl
from dpl.core import artifacts, losses, models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def labels(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("labels") / "soft"
    r = dpl("label", teacher, "-o", out)
    assert r.code == 0, r
    return out


@pytest.fixture(scope="module")
def hard_labels(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("labels") / "hard"
    r = dpl("label", teacher, "--hard", "-o", out)
    assert r.code == 0, r
    return out


def test_dkd_distils_offline_from_stored_soft_labels(labels, tmp_path):
    out = tmp_path / "dkd.safetensors"
    r = dpl("distill", "--labels", labels, "--loss", "dkd", "--tau", "4", "--arch", "cnn-s", "--epochs", "4",
            "--batch-size", "64", "-o", out)
    assert r.code == 0, r
    meta = artifacts.read_header(out).meta
    assert meta["distill"]["loss"] == "dkd" and meta["distill"]["tau"] == 4
    assert meta["metrics"]["test_top1"] > 0.5          # ten classes: chance is 0.1
    assert not any(k.startswith(artifacts.OBJECTIVE_PREFIX) for k in artifacts.load_checkpoint(out).tensors)


def test_loss_choices_come_from_the_registry():
    r = dpl("distill", "--help")
    assert all(name in r.stdout for name in losses.LOGIT_LOSSES)
    assert_refused(dpl("distill", "--labels", "x", "--loss", "nope", "-o", "s.safetensors"), "nope", "kd, dkd")


def test_options_that_cannot_apply_are_refused(teacher, labels, hard_labels, tmp_path):
    out = tmp_path / "s.safetensors"
    assert_refused(dpl("distill", "--labels", hard_labels, "--alpha", "0.5", "-o", out), "offline KD", "hard")
    assert_refused(dpl("distill", "--labels", labels, "--teacher", teacher, "--alpha", "0.5", "-o", out), "--alpha",
                   "no --teacher")
    assert_refused(dpl("distill", "--teacher", teacher, "--unlabeled-ratio", "2", "-o", out), "--unlabeled-ratio")
    assert_refused(dpl("distill", "--teacher", teacher, "--unlabeled-weight", "2", "-o", out), "--unlabeled-weight")
    assert_refused(dpl("distill", "--labels", hard_labels, "--loss", "dkd", "-o", out), "--loss dkd", "hard")
    assert_refused(dpl("distill", "--labels", labels, "--loss", "dkd", "--hard", "-o", out), "--loss dkd", "--hard")
    assert_refused(dpl("eval", labels, "--data", "digits:test"), "--data", "label folder")
    assert_refused(dpl("eval", labels, "--split-seed", "3", "--batch-size", "64"), "--split-seed", "--batch-size")
    assert_refused(dpl("label", teacher, "--hard", "--topk", "3", "-o", tmp_path / "l"), "--topk")
    assert not out.exists() and not (tmp_path / "l").exists()


def test_a_stopping_tap_runs_nothing_past_the_layers_it_taps():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ran = []
    model[3].register_forward_hook(lambda *a: ran.append("fc"))
    with models.Taps(model, ["1"], stop=True) as taps:
        out = taps.tensor(torch.zeros(2, 1, 8, 8), "1")
    assert out.shape == (2, 4, 6, 6) and ran == []
    with models.Taps(model, ["1", models.FEATURES]) as taps:
        captured = taps(torch.zeros(2, 1, 8, 8))
    assert list(captured) == ["1", models.FEATURES] and captured[models.FEATURES].shape == (2, 144)
    assert ran == ["fc"] and not model[1]._forward_hooks        # hooks are off once the taps are removed


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = (node.module or "").split(".")[-1]
            found.update([base] if node.module else [a.name for a in node.names])
    return found


def test_objectives_are_peers_and_commands_do_not_borrow_from_each_other():
    objectives = {"teach", "distill", "hint", "pretext", "semi", "mil", "experts", "wsddn", "detect"}
    built_on = {"experts": {"distill"}}     # the multi-head student reuses distill's batches and loss options
    modules = {p.stem if p.stem != "__init__" else p.parent.name: p for p in (ROOT / "core").rglob("*.py")}
    for name in objectives | {"label", "common", "train", "losses", "evaluate", "features"}:
        borrowed = _imports(modules[name]) & (objectives - {name} - built_on.get(name, set()))
        assert not borrowed, (name, borrowed)
    # measure and detect are shared by several commands (measuring; the detector paths of teach, label, distill, eval)
    commands = {p.stem for p in (ROOT / "cli").glob("*.py")} - {"common", "measure", "main", "__init__"}
    for name in commands:
        assert not _imports(ROOT / "cli" / f"{name}.py") & (commands - {name}), name


# ---- the README's tour, run as written (epochs cut to 1: the commands and the output's shape are checked,
# not the figures) -------------------------------------------------------------------------------------

def _tour_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    tour = text[text.index("## Tour"): text.index("The same loop on your own photos")]
    return [shlex.split(re.sub(r"#.*", "", line[2:])) for line in tour.splitlines() if line.startswith("$ dpl ")]


def _readme_block_after(command: str) -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(command) + 1
    return lines[start: next(i for i in range(start, len(lines)) if lines[i].startswith(("$", "```")))]


def test_the_readme_tour_runs_as_written_and_shows_real_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = _tour_commands()
    assert len(commands) >= 8
    outputs = {}
    for argv in commands:
        argv = argv[1:]
        if "--epochs" in argv:
            argv[argv.index("--epochs") + 1] = "1"
        if argv[0] in ("teach", "distill", "label"):
            argv.append("--force")
        r = dpl(*argv)
        assert r.code == 0, (argv, r)
        outputs[" ".join(argv[:3])] = r.stdout
    line = _readme_block_after("$ dpl eval t0.safetensors --json")[0]
    shown = json.loads(re.sub(r": \.\.\.\}", ": null}", re.sub(r", \.\.\.\]", "]", line)))    # "..." elides values
    real = json.loads(outputs["eval t0.safetensors --json"])
    assert list(real)[:len(shown)] == list(shown)       # the README may leave off the long trailing fields
    info = _readme_block_after("$ dpl info t0.safetensors")
    real_info = dpl("info", "t0.safetensors").stderr + dpl("info", "t0.safetensors").stdout
    real_lines = [l for l in real_info.splitlines() if l.strip()]
    shown_fields = [l.split()[0] for l in info]
    # (in-process, the recorded command is pytest's own argv, which may wrap onto more lines)
    assert [l.split()[0] for l in real_lines if l.split()[0] in shown_fields] == shown_fields
    assert info[-1].split(None, 1)[1] == real_lines[-1].split(None, 1)[1]     # the lineage line
