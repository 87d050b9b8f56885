"""The record of a run: the metrics log, the history and best epoch in the checkpoint, validation, TensorBoard."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import assert_refused, dpl
from dpl.core import artifacts, data
from dpl.core.reporting import evaluate, records
from dpl.core.engine import train

TEACH = ["teach", "--data", "digits", "--arch", "cnn-s", "--device", "cpu"]


def header(path):
    return artifacts.read_header(path, kind="checkpoint").meta


def read_log(path):
    return [json.loads(line) for line in records.log_path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "best.safetensors"
    r = dpl(*TEACH, "--epochs", "4", "--val-per-class", "4", "--val-every", "1", "--keep", "best",
            "--log-every", "5", "--lr", "0.2", "-o", out)
    assert r.code == 0, r
    return out


def test_every_epoch_is_logged_and_kept_in_the_checkpoint(validated):
    log = read_log(validated)
    epochs = [r for r in log if r["event"] == "epoch"]
    steps = [r for r in log if r["event"] == "step"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    n_steps = epochs[0]["step"]                       # 1302 samples / batch 128
    assert n_steps == 10 and [r["step"] for r in steps] == [5, 15, 25, 35]
    for r in epochs:
        assert {"loss", "ce", "acc", "lr", "seconds", "images_per_s", "val_top1", "val_nll", "val_ece"} <= set(r)
        assert r["loss"] == pytest.approx(r["ce"]) and 0 <= r["acc"] <= 1 and r["images_per_s"] > 0
    assert epochs[-1]["lr"] < epochs[0]["lr"]         # cosine decay
    meta = header(validated)
    assert meta["history"] == [{k: v for k, v in r.items() if k != "event"} for r in epochs]


def test_the_best_epoch_is_kept_and_recorded_beside_the_last(validated):
    meta = header(validated)
    history, weights = meta["history"], meta["weights"]
    best = max(history, key=lambda h: (h["val_top1"], -h["epoch"]))
    assert weights["kept"] == "best" and weights["epoch"] == best["epoch"] == weights["best_epoch"]
    assert weights["epochs"] == 4 and weights["last"]["val_top1"] == history[-1]["val_top1"]
    assert weights["best"]["val_top1"] == best["val_top1"]
    assert meta["val"]["n"] == 40 and meta["data"]["val_per_class"] == 4 and meta["data"]["n"] == 1352 - 40
    # The weights written are the best epoch's: they score its validation top-1 on the held-out samples.
    full = data.load("digits")
    _, val = data.hold_out(full, data.Holdout(per_class=4, seed=0))
    ckpt = artifacts.load_checkpoint(validated)
    logits = evaluate.predict(ckpt.build_model(), val.images, ckpt.input, train.runtime("cpu"))
    assert evaluate.classification_metrics(logits, val.labels, 10)["top1"] == pytest.approx(best["val_top1"], abs=1e-6)


def test_the_validation_set_is_stratified_deterministic_and_never_trained_on():
    full = data.load("digits")
    rest, val = data.hold_out(full, data.Holdout(per_class=5, seed=1))
    again, val2 = data.hold_out(full, data.Holdout(per_class=5, seed=1))
    assert torch.equal(val.indices, val2.indices) and torch.equal(rest.indices, again.indices)
    assert torch.bincount(val.labels).tolist() == [5] * 10
    assert not set(val.indices.tolist()) & set(rest.indices.tolist())
    assert len(rest) + len(val) == len(full)
    other, _ = data.hold_out(full, data.Holdout(per_class=5, seed=2))
    assert not torch.equal(other.indices, rest.indices)


def test_validation_every_k_epochs_and_the_last(tmp_path):
    out = tmp_path / "t.safetensors"
    assert dpl(*TEACH, "--epochs", "3", "--val", "30", "--val-every", "2", "-o", out).code == 0
    meta = header(out)
    assert ["val_top1" in h for h in meta["history"]] == [False, True, True]
    assert meta["weights"]["kept"] == "last" and meta["weights"]["epoch"] == 3     # the default


def test_distill_logs_pseudo_label_figures_and_validates_on_its_labeled_part(teacher, tmp_path):
    out = tmp_path / "s.safetensors"
    r = dpl("distill", "--teacher", teacher, "--labeled-per-class", "20", "--arch", "cnn-s", "--epochs", "2",
            "--val-per-class", "5", "--device", "cpu", "-o", out)
    assert r.code == 0, r
    last = read_log(out)[-1]
    assert {"ce", "kd", "pseudo", "pseudo_conf", "val_top1"} <= set(last)
    assert len(last["pseudo_class_frac"]) == 10 and sum(last["pseudo_class_frac"]) == pytest.approx(1.0)
    kept = header(out)["history"][-1]         # the checkpoint keeps the scalars; per-class vectors stay in the log
    assert kept == {k: v for k, v in last.items() if k not in ("event", "pseudo_class_frac")}
    assert 0.1 <= last["pseudo_conf"] <= 1
    assert header(out)["data"]["n"] == 150      # 20 labeled per class, 5 of them held out


def test_hint_and_pretrain_write_their_logs_too(teacher, tmp_path):
    assert dpl("pretrain", "--task", "rotation", "--arch", "cnn-s", "--epochs", "1", "--device", "cpu",
               "-o", tmp_path / "p.safetensors").code == 0
    assert [r["event"] for r in read_log(tmp_path / "p.safetensors")][-1] == "epoch"
    assert header(tmp_path / "p.safetensors")["history"][0]["ce"] > 0
    assert dpl("hint", "--teacher", teacher, "--arch", "cnn-s", "--epochs", "1", "--device", "cpu",
               "-o", tmp_path / "h.safetensors").code == 0
    assert "hint" in read_log(tmp_path / "h.safetensors")[-1]


def test_tensorboard_gets_the_same_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, board = tmp_path / "t.safetensors", tmp_path / "tb"
    assert dpl(*TEACH, "--epochs", "2", "--val", "20", "--log-every", "4", "--tensorboard", board, "-o", out).code == 0
    events = EventAccumulator(str(board))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"epoch/loss", "epoch/acc", "epoch/lr", "epoch/val_top1", "step/loss"} <= tags
    logged = [r["val_top1"] for r in read_log(out) if r["event"] == "epoch"]
    assert [e.value for e in events.Scalars("epoch/val_top1")] == pytest.approx(logged)


def test_tensorboard_without_the_package_is_one_line_and_nothing_is_written(tmp_path):
    fake = tmp_path / "fake"
    (fake / "tensorboard").mkdir(parents=True)
    (fake / "tensorboard" / "__init__.py").write_text("raise ImportError('no tensorboard here')\n")
    out = tmp_path / "t.safetensors"
    env = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-m", "dpl.cli.main", *TEACH, "--epochs", "1", "--tensorboard",
                        tmp_path / "tb", "-o", out], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "pip install" in r.stderr and "tensorboard" in r.stderr
    assert not out.exists() and not records.log_path(out).exists() and not (tmp_path / "tb").exists()


@pytest.mark.parametrize("args, words", [
    (["--val-per-class", "200"], ["--val-per-class 200", "no training sample", "class"]),
    (["--labeled-per-class", "5", "--val-per-class", "5"], ["--val-per-class 5", "no training sample"]),
    (["--val", "5"], ["--val 5", "fewer than the 10 classes"]),
    (["--keep", "best"], ["--keep best", "--val"]),
    (["--keep", "first"], ["--keep", "best or last"]),
    (["--val", "20", "--val-per-class", "2"], ["--val-per-class or --val"]),
])
def test_bad_validation_options_are_one_line_and_nothing_is_written(tmp_path, args, words):
    out = tmp_path / "t.safetensors"
    assert_refused(dpl(*TEACH, "--epochs", "1", *args, "-o", out), *words)
    assert not out.exists() and not records.log_path(out).exists()


def test_distill_without_a_labeled_part_refuses_a_validation_set(teacher, tmp_path):
    labels, out = tmp_path / "labels", tmp_path / "s.safetensors"
    assert dpl("label", teacher, "--data", "digits:test", "-o", labels).code == 0
    assert_refused(dpl("distill", "--labels", labels, "--val", "20", "--epochs", "1", "-o", out), "--val", "labeled")
    assert not out.exists()
