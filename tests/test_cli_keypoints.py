"""Keypoint models through the CLI: dpl teach on poses: (the task from the data), the checkpoint it writes, dpl eval
(PCK per part, OKS AP, --json, --seeds), dpl info, and the refusals of the task table (keypoint data for a
classifier, a detector architecture, options of other tasks, a keypoint set that is not the model's)."""

import json

import pytest

from conftest import assert_refused, dpl, write_imagefolder
from dpl.core import artifacts
from dpl.core.data.poses import NAMES, PARTS

POSES = ("--data", "poses", "--canvas", "40", "--pose-scale", "0.8,0.95", "--poses", "48", "--test-poses", "16")
FAST = ("--arch", "cnn-s", "--epochs", "2", "--batch-size", "16", "--lr", "0.002", "--optimizer", "adamw",
        "--device", "cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def keypoint_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("keypoints") / "kp.safetensors"
    r = dpl("teach", *POSES, *FAST, "--val", "8", "-o", out)
    assert r.code == 0, r
    return out


def test_teach_on_poses_writes_a_keypoint_checkpoint(keypoint_model):
    meta = artifacts.read_header(keypoint_model).meta
    assert meta["task"] == "keypoints" and meta["num_classes"] == len(NAMES) and meta["classes"] == NAMES
    section = meta["keypoints"]
    assert section["names"] == NAMES and section["parts"] == {k: list(v) for k, v in PARTS.items()}
    assert section["heatmap_stride"] * section["heatmap_size"] == 40
    assert meta["data"]["spec"] == "poses:train" and meta["data"]["poses"]["canvas"] == 40
    assert meta["train"]["val"]["images"] == 8 and meta["data"]["n"] == 40
    epochs = [h for h in meta["history"]]
    assert len(epochs) == 2 and all("val_pck" in h and "heatmap" in h for h in epochs)
    for key in ("test_pck", "test_pck_body", "test_pck_hands", "test_pck_face", "test_ap"):
        assert 0 <= meta["metrics"][key] <= 1


def test_eval_measures_pck_by_part_and_oks_ap(keypoint_model):
    r = dpl("eval", keypoint_model, "--json", "--device", "cpu")
    assert r.code == 0, r
    found = json.loads(r.stdout)
    assert found["task"] == "keypoints" and found["data"] == "poses:test" and found["n"] == 16
    meta = artifacts.read_header(keypoint_model).meta["metrics"]
    assert found["pck"] == pytest.approx(meta["test_pck"]) and found["ap"] == pytest.approx(meta["test_ap"])
    assert {"pck_body", "pck_hands", "pck_face", "pck05", "ap50", "ap75", "images_per_s"} <= set(found)
    r = dpl("eval", keypoint_model, "--device", "cpu")
    assert r.code == 0 and "PCK@0.1" in r.stderr and "hands" in r.stderr, r
    r = dpl("eval", keypoint_model, "--seeds", "--device", "cpu")
    assert r.code == 0 and "± 0." not in r.stderr and "n = 1: one run" in r.stderr, r
    assert dpl("info", keypoint_model).code == 0


def test_keypoint_refusals_come_from_the_task_table(keypoint_model, teacher, tmp_path):
    out = tmp_path / "x.safetensors"
    assert_refused(dpl("teach", *POSES, "--arch", "frcnn-cnn-s", "-o", out), "frcnn-cnn-s", "a keypoint model")
    assert_refused(dpl("teach", *POSES, "--label-smoothing", "0.1", "-o", out),
                   "--label-smoothing", "a keypoint model")
    assert_refused(dpl("teach", *POSES, "--scenes", "10", "-o", out), "--scenes", "a keypoint model")
    assert_refused(dpl("eval", keypoint_model, "--data", "digits"), str(keypoint_model), "classification data")
    assert_refused(dpl("eval", teacher, "--data", "poses"), str(teacher), "data with keypoints")
    assert_refused(dpl("teach", *POSES, "--pose-scale", "0.9", "-o", out), "--pose-scale")
    assert not out.exists()


def test_predict_writes_every_keypoint_of_each_image(keypoint_model, tmp_path):
    ckpt = artifacts.load_checkpoint(keypoint_model, task="keypoints")
    c, s = ckpt.input["channels"], ckpt.input["size"]
    photos = write_imagefolder(tmp_path / "photos", size=s, mode="L" if c == 1 else "RGB", splits=(None,))
    out = tmp_path / "kp.jsonl"
    r = dpl("predict", keypoint_model, "--data", f"imagefolder:{photos}", "-o", out)
    assert r.code == 0, r
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 18 and list(lines[0]["keypoints"]) == list(NAMES)
    assert all(len(v) == 3 and 0 <= v[0] <= s and 0 <= v[2] <= 1 for v in lines[0]["keypoints"].values())
    r = dpl("predict", keypoint_model, "--data", f"imagefolder:{photos}", "-o", tmp_path / "kp.csv")
    assert r.code == 0, r
    assert (tmp_path / "kp.csv").read_text().splitlines()[0].startswith(f"file,{NAMES[0]}_x,{NAMES[0]}_y,")
