import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import assert_refused, assert_usage_error, dpl, dpl_process, needs_fashion
from test_artifacts import corrupt_files


def test_teach_then_eval_on_digits_reaches_90_percent(tmp_path):
    out = tmp_path / "t.safetensors"
    r = dpl("teach", "--data", "digits", "--arch", "cnn-s", "--epochs", "10", "--randaugment", "1,5",
            "--dropout", "0.1", "--stochastic-depth", "0.1", "--device", "cpu", "-o", out)
    assert r.code == 0, r
    assert r.stdout.strip() == str(out)              # stdout carries the path alone
    r = dpl("eval", out, "--json")
    assert r.code == 0, r
    result = json.loads(r.stdout)
    assert result["top1"] >= 0.90
    assert result["data"] == "digits:test" and result["n"] > 400
    assert set(result) >= {"top1", "top5", "nll", "ece", "per_class", "n", "checkpoint", "data"}
    assert len(result["per_class"]) == 10 and all(0 <= a <= 1 for a in result["per_class"])
    assert 0 <= result["ece"] <= 1 and result["top5"] >= result["top1"]


def test_checkpoint_metadata_names_data_arch_input_and_metrics(teacher):
    r = dpl("info", teacher, "--json")
    assert r.code == 0, r
    meta = json.loads(r.stdout)
    assert meta["dpl.kind"] == "checkpoint" and meta["num_classes"] == 10
    assert meta["arch"]["name"] == "cnn-s" and meta["arch"]["in_channels"] == 1
    assert meta["input"]["size"] == 8 and len(meta["input"]["mean"]) == 1
    assert meta["data"]["spec"] == "digits:train" and len(meta["data"]["fingerprint"]) == 64
    assert meta["metrics"]["test_top1"] > 0.5 and meta["seed"] == 0
    assert meta["parents"] == [] and meta["lineage"] == []
    assert "dpl.version" in meta and "created" in meta and "command" in meta


def test_teach_on_the_labeled_part_and_init_records_the_parent(tmp_path, teacher):
    out = tmp_path / "s.safetensors"
    r = dpl("teach", "--labeled-per-class", "5", "--arch", "cnn-s", "--epochs", "2", "--init", teacher, "-o", out)
    assert r.code == 0, r
    meta = json.loads(dpl("info", out, "--json").stdout)
    assert meta["data"]["part"] == "labeled" and meta["data"]["n"] == 50
    assert meta["data"]["labeled_per_class"] == 5
    assert meta["parents"][0]["role"] == "init" and meta["lineage"][0]["status"] == "present"
    assert "init" in dpl("info", out).stderr


def test_config_file_supplies_options_and_flags_override(tmp_path):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("arch: cnn-s\nepochs: 1\nbatch-size: 64\nrandaugment: [2, 9]\n")
    out = tmp_path / "c.safetensors"
    r = dpl("teach", "--config", cfg, "--epochs", "2", "-o", out)
    assert r.code == 0, r
    meta = json.loads(dpl("info", out, "--json").stdout)
    assert meta["arch"]["name"] == "cnn-s"
    assert meta["train"]["epochs"] == 2 and meta["train"]["batch_size"] == 64
    assert meta["train"]["randaugment"] == [2, 9]
    cfg.write_text("archh: cnn-s\n")
    assert_usage_error(dpl("teach", "--config", cfg, "-o", out, "--force"), "archh")


def test_info_layers_lists_paths_and_shapes():
    r = dpl("info", "--layers", "cnn-m", "--data", "digits", "--json")
    assert r.code == 0, r
    rows = {row["path"]: row for row in json.loads(r.stdout)["layers"]}
    assert rows["stages.2"]["shape"] == [128, 2, 2] and rows["head.fc"]["shape"] == [10]


def test_eval_on_imagefolder_with_other_classes_is_refused(tmp_path, teacher):
    from conftest import write_imagefolder
    root = write_imagefolder(tmp_path / "imgs", size=8)
    assert_refused(dpl("eval", teacher, "--data", f"imagefolder:{root}:test"), "predicts 10 classes", "has 3")


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------

BAD_TEACH = [
    (["--arch", "cnn-xl"], ["unknown architecture 'cnn-xl'", "cnn-s"]),
    (["--data", "imagenet"], ["unknown dataset 'imagenet'", "digits"]),
    (["--data", "digits:val"], ["no split 'val'"]),
    (["--labeled-per-class", "1000"], ["has only", "1000"]),
    (["--labeled-per-class", "5", "--labeled", "50"], ["not both"]),
    (["--randaugment", "2"], ["--randaugment"]),
    (["--optimizer", "lbfgs"], ["unknown optimizer"]),
    (["--init", "absent.safetensors"], ["absent.safetensors", "no such file"]),
    (["--arch", "mobilenet_v3_small", "--stochastic-depth", "0.2"], ["stochastic depth"]),
]


@pytest.mark.parametrize("args,words", BAD_TEACH)
def test_teach_bad_input(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    assert_refused(dpl("teach", "--epochs", "1", *args, "-o", "out.safetensors"), *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,option", [(["--epochs", "three"], "--epochs"), (["--lr", "-1"], "--lr"),
                                         (["--epochs", "0"], "--epochs"), (["--dropout", "2"], "--dropout")])
def test_teach_malformed_options(tmp_path, monkeypatch, args, option):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(dpl("teach", *args, "-o", "out.safetensors"), option)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["truncated", "random", "pickle", "foreign", "label-kind"])
def test_init_and_eval_refuse_non_checkpoints(tmp_path, case):
    bad = corrupt_files(tmp_path)[case]
    out = tmp_path / "out.safetensors"
    assert_refused(dpl("teach", "--epochs", "1", "--init", bad, "-o", out), str(bad))
    assert_refused(dpl("eval", bad), str(bad))
    assert not out.exists()


def test_init_with_another_architecture_is_refused(tmp_path, teacher):
    out = tmp_path / "out.safetensors"
    assert_refused(dpl("teach", "--arch", "cnn-m", "--init", teacher, "-o", out), "do not fit the architecture")
    assert not out.exists()


def test_existing_output_needs_force_and_missing_folder_is_refused(tmp_path, teacher):
    before = teacher.read_bytes()
    assert_refused(dpl("teach", "--epochs", "1", "-o", teacher), "exists", "--force")
    assert teacher.read_bytes() == before
    assert_refused(dpl("teach", "--epochs", "1", "-o", tmp_path / "no" / "t.safetensors"), "does not exist")


def test_console_script_refuses_without_traceback(tmp_path):
    r = dpl_process("eval", tmp_path / "absent.safetensors")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr


def test_ctrl_c_during_teach_leaves_no_output_but_a_resume_state_and_the_log_so_far(tmp_path):
    out, state = tmp_path / "t.safetensors", tmp_path / "t.safetensors.resume"
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "dpl"), "teach", "--epochs", "500",
                             "--arch", "cnn-s", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and "--resume" in err
    log = tmp_path / "t.metrics.jsonl"
    assert sorted(tmp_path.iterdir()) == [log, state]
    assert '"event": "epoch"' in log.read_text()        # the state is written after the first epoch's record


@pytest.mark.slow
@needs_fashion
def test_fashion_mnist_teach_and_eval(tmp_path):
    out = tmp_path / "f.safetensors"
    r = dpl("teach", "--data", "fashion-mnist", "--labeled-per-class", "100", "--arch", "cnn-s",
            "--epochs", "15", "--batch-size", "64", "-o", out)
    assert r.code == 0, r
    result = json.loads(dpl("eval", out, "--json").stdout)
    assert result["data"] == "fashion-mnist:test" and result["n"] == 10000
    assert result["top1"] > 0.72


def test_help_shows_the_written_defaults_rich_would_take_for_markup():
    from typer.testing import CliRunner

    from dpl.cli.main import app

    out = CliRunner().invoke(app, ["label", "--help"], env={"COLUMNS": "300"}).output
    assert "[default: the teacher's training data]" in out
    out = CliRunner().invoke(app, ["teach", "--help"], env={"COLUMNS": "300"}).output
    assert "[default: 0, or up to 4" in out
