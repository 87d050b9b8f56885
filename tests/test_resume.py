import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from conftest import assert_refused, dpl

# Validation with --keep best: the resume state carries the best epoch's weights too.
RUN = ["teach", "--arch", "cnn-s", "--epochs", "12", "--seed", "3", "--randaugment", "2,9", "--dropout", "0.2",
       "--val-per-class", "3", "--keep", "best", "--log-every", "4", "--device", "cpu"]


def start(out, *extra):
    exe = os.path.join(os.path.dirname(sys.executable), "dpl")
    return subprocess.Popen([exe, *RUN, *extra, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        if time.time() > deadline:
            pytest.fail(f"no {path.name} within {timeout} s")
        time.sleep(0.05)


def log_without_timing(out) -> list[dict]:
    path = out.with_name(out.name.removesuffix(".safetensors") + ".metrics.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s", "val_seconds")} for r in records]


def max_weight_difference(a, b) -> float:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta if ta[k].numel())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "whole.safetensors"
    proc = start(out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "t.safetensors"
    state = tmp_path / "t.safetensors.resume"
    proc = start(out)
    wait_for(state, proc)
    time.sleep(0.3)                 # into a later epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and state.exists()
    resumed = start(out, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert not state.exists()       # removed once the run completed
    assert max_weight_difference(out, uninterrupted) <= 1e-6
    # The killed run logged steps past its last resume state; the resumed log drops them and goes on.
    assert log_without_timing(out) == log_without_timing(uninterrupted)
    assert len([r for r in log_without_timing(out) if r["event"] == "epoch"]) == 12


def test_sigterm_writes_a_state_at_the_step_and_resume_continues(uninterrupted, tmp_path):
    out = tmp_path / "t.safetensors"
    proc = start(out, "--keep-state")
    wait_for(tmp_path / "t.safetensors.resume", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "--resume" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    resumed = start(out, "--resume", "--keep-state")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert (tmp_path / "t.safetensors.resume").exists()    # --keep-state
    assert max_weight_difference(out, uninterrupted) <= 1e-6
    assert log_without_timing(out) == log_without_timing(uninterrupted)


def test_resume_state_of_another_run_is_refused(tmp_path):
    out = tmp_path / "t.safetensors"
    short = ["teach", "--arch", "cnn-s", "--epochs", "2"]
    assert dpl(*short, "--keep-state", "-o", out).code == 0
    out.unlink()
    assert_refused(dpl(*short[:-1], "3", "--resume", "-o", out), "different run", "epochs", "2", "3")
    assert_refused(dpl(*short, "-o", out), "unfinished run", "--resume")
    assert_refused(dpl(*short, "--resume", "-o", tmp_path / "other.safetensors"), "no resume state")


def test_nan_loss_stops_with_the_step_and_a_hint(tmp_path):
    out = tmp_path / "t.safetensors"
    r = dpl("teach", "--arch", "cnn-s", "--epochs", "3", "--lr", "1e30", "--warmup-epochs", "0", "-o", out)
    assert r.code == 1, r
    assert "loss is" in r.stderr and "epoch" in r.stderr and "--lr" in r.stderr
    assert not out.exists() and (tmp_path / "t.safetensors.resume").exists()
