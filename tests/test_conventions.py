"""The command-line conventions a user expects: --version, shell completion, one-line usage errors, inherited
data said aloud, examples in --help."""

import json
import shlex
import sys

import pytest

from conftest import dpl, dpl_process, write_imagefolder
from dpl.cli import common, main
from dpl.cli.main import EXAMPLES
from dpl.core import models


def console(monkeypatch, capsys, *args, env=None):
    """Run the console script (`dpl.cli.main:main`, whose error formatting the tests check) in-process:
    (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dpl", *args])
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as stop:
        main.main()
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def test_version_prints_dpl_torch_and_torchvision(monkeypatch, capsys):
    code, out, err = console(monkeypatch, capsys, "--version")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert [l.split()[0] for l in lines] == ["dpl", "torch", "torchvision"] and lines[0] == "dpl 0.1.0"
    assert dpl_process("--version").stdout == out           # the installed console script says the same


def test_shell_completion_script_and_what_it_completes(monkeypatch, capsys):
    def complete(words: str) -> list[str]:
        """What bash completion offers for the last word of `words`."""
        cword = len(shlex.split(words)) - (0 if words.endswith(" ") else 1)
        _, out, _ = console(monkeypatch, capsys, env={"_DPL_COMPLETE": "complete_bash", "COMP_WORDS": words,
                                                      "COMP_CWORD": str(cword)})
        return out.split()

    # The shell named, not detected from the parent process (which need not be a shell: nohup, CI runners).
    code, script, err = console(monkeypatch, capsys, "--show-completion", "bash",
                                env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert code == 0 and "_dpl_completion" in script and "complete" in script, (code, err)
    assert complete("dpl te") == ["teach"]
    assert complete("dpl teach --arch resnet1") == [n for n in models.REGISTRY if n.startswith("resnet1")]
    assert set(complete("dpl teach --arch ")) == {*models.REGISTRY, "timm:"}     # timm:NAME: any of timm's
    assert "fashion-mnist" in complete("dpl label t.safetensors --data f") and "imagefolder:" in complete("dpl teach --data i")
    assert complete("dpl pretrain --task ji") == ["jigsaw"]
    assert "--epochs" in complete("dpl teach --ep")


@pytest.mark.parametrize("args, words", [
    (["teach", "--bogus"], ["no such option: --bogus", "(try 'dpl teach -h')"]),
    (["teach", "--epoch", "3"], ["no such option: --epoch", "--epochs"]),            # the suggestion stays
    (["teach", "--epochs", "x"], ["'--epochs'", "valid integer", "(try 'dpl teach -h')"]),
    (["label"], ["missing argument", "(try 'dpl label -h')"]),
    (["bogus"], ["no such command 'bogus'", "(try 'dpl -h')"]),
    (["plot", "curves", "--nope"], ["no such option: --nope", "(try 'dpl plot curves -h')"]),
])
def test_usage_errors_are_one_line_on_stderr_with_exit_2(monkeypatch, capsys, args, words):
    code, out, err = console(monkeypatch, capsys, *args)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpl: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_every_subcommand_ends_its_help_with_examples_that_parse():
    for command, examples in EXAMPLES.items():
        if not examples:
            continue
        shown = " ".join(dpl(*command.split(), "-h").stdout.split())
        assert "Examples:" in shown, command
        for example in examples:
            assert example in shown, (command, example)
            words = shlex.split(example)
            if words[0] != "dpl":
                continue                       # make -C recipes/...
            # -h is eager, but an unknown option still fails while the line is parsed
            r = dpl(*words[1:], "-h")
            assert r.code == 0, (example, r)


def test_label_says_what_it_inherited_from_the_teacher(tmp_path):
    teacher = tmp_path / "t.safetensors"
    assert dpl("teach", "--labeled-per-class", "10", "--arch", "cnn-s", "--epochs", "1", "-o", teacher).code == 0
    r = dpl("label", teacher, "-o", tmp_path / "labels")
    assert r.code == 0, r
    assert (f"labels digits:train, unlabeled part of --labeled-per-class 10 --split-seed 0: data and partition as "
            f"for the teacher {teacher}") in r.stderr
    # another source: the teacher's partition belongs to digits and is not applied to it, said aloud
    photos = write_imagefolder(tmp_path / "photos", size=8, classes=[str(i) for i in range(10)], per_class=2)
    r = dpl("label", teacher, "--data", f"imagefolder:{photos}", "-o", tmp_path / "pool")
    assert r.code == 0, r
    assert "(--labeled-per-class 10 --split-seed 0) belongs to digits:train and is not applied" in r.stderr
    # given explicitly: nothing to say
    r = dpl("label", teacher, "--data", "digits", "--labeled-per-class", "10", "-o", tmp_path / "again")
    assert r.code == 0 and "as for the teacher" not in r.stderr


def test_a_model_that_collapses_in_eval_mode_is_said():
    collapsed = {"num_classes": 10, "metrics": {"train_acc": 0.475, "test_top1": 0.11}}
    assert "less than half the training accuracy 0.475" in common.disagreement(collapsed)
    for fine in ({"train_acc": 0.99, "test_top1": 0.70}, {"train_acc": 0.15, "test_top1": 0.05}, {"train_loss": 1.0}):
        assert common.disagreement({"num_classes": 10, "metrics": fine}) is None


def test_warmup_ends_before_the_schedule_does(tmp_path):
    out = tmp_path / "t.safetensors"
    r = dpl("teach", "--arch", "cnn-s", "--epochs", "1", "--log-every", "2", "-o", out)      # default warmup: 1 epoch
    assert r.code == 0 and "--warmup-epochs 1 shortened to 0.2, a fifth of the 1-epoch run" in r.stderr, r
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "t.metrics.jsonl").read_text().splitlines()]
    assert max(lrs) == pytest.approx(0.05) and lrs[-1] == pytest.approx(0.0, abs=1e-12)   # peaks, then decays to 0
    meta = json.loads(dpl("info", out, "--json").stdout)
    assert meta["train"]["warmup_epochs"] == pytest.approx(0.2)
    r = dpl("teach", "--arch", "cnn-s", "--epochs", "5", "-o", tmp_path / "five.safetensors")
    assert r.code == 0 and "shortened" not in r.stderr
