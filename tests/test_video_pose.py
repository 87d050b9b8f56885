"""Video pose distillation through the CLI (dpl label on clips with a keypoint teacher, dpl distill --labels of
clips, dpl eval --data clips --few-shot) and the few-shot evaluation against a hand-computed case."""

import json

import pytest
import torch

from conftest import assert_refused, dpl
from dpl.core import artifacts
from dpl.core.methods import keypoints, video_pose
from dpl.core.reporting import video

pytestmark = pytest.mark.usefixtures("one_thread")

CLIPS = ("--data", "clips", "--canvas", "48", "--clips", "20", "--test-clips", "10", "--frames", "4")
FAST = ("--arch", "cnn-s", "--epochs", "1", "--batch-size", "16", "--device", "cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A keypoint teacher (one epoch on 48 px figures), its labels of 20 clips, and a student distilled from them."""
    out = tmp_path_factory.mktemp("video")
    r = dpl("teach", "--data", "poses", "--canvas", "48", "--pose-scale", "0.8,0.95", "--poses", "32",
            "--test-poses", "8", *FAST, "-o", out / "teacher.safetensors")
    assert r.code == 0, r
    r = dpl("label", out / "teacher.safetensors", *CLIPS, "-o", out / "labels", "--json")
    assert r.code == 0, r
    r2 = dpl("distill", "--labels", out / "labels", *FAST, "-o", out / "student.safetensors")
    assert r2.code == 0, r2
    return out, json.loads(r.stdout)


def test_label_clips_writes_every_frame(run):
    out, found = run
    assert found["frames"] == 20 * 4 and 0 <= found["pck"] <= 1
    labels = keypoints.read_labels(out / "labels")
    assert labels.index.tolist() == list(range(80)) and labels.coords.shape == (80, 32, 2)
    assert labels.meta["data"]["spec"] == "clips:train" and labels.meta["data"]["frames"] == 4


def test_distilled_student_and_its_record(run):
    out, _ = run
    meta = artifacts.read_header(out / "student.safetensors").meta
    assert meta["task"] == "video-pose" and meta["video_pose"]["motion_weight"] == 0.1
    assert meta["input"]["channels"] == 2 and meta["video_pose"]["frames"] == 4
    assert meta["parents"][0]["role"] == "labels"
    net, _ = video_pose.load_student(out / "student.safetensors")
    pose, motion = net(torch.zeros(3, 2, 48, 48))
    assert pose.shape == motion.shape == (3, 32, 2)
    assert {"pose", "motion"} <= set(meta["history"][-1])


def test_without_motion_trains_pose_alone(run, tmp_path):
    out, _ = run
    r = dpl("distill", "--labels", out / "labels", *FAST, "--motion-weight", "0", "-o", tmp_path / "s.safetensors")
    assert r.code == 0, r
    meta = artifacts.read_header(tmp_path / "s.safetensors").meta
    assert "motion" not in meta["history"][-1] and meta["video_pose"]["motion_weight"] == 0


def test_few_shot_table_of_every_kind_of_model(run):
    out, _ = run
    r = dpl("eval", out / "student.safetensors", out / "teacher.safetensors", *CLIPS, "--few-shot", "1",
            "--episodes", "3", "--json")
    assert r.code == 0, r
    rows = json.loads(r.stdout)
    assert [row["features"] for row in rows] == ["student features", "teacher keypoints", "teacher backbone"]
    assert rows[1]["width"] == 64 and all(0 <= row["shot1"] <= 1 for row in rows)


def test_refusals(run, tmp_path):
    out, _ = run
    # a teacher of another canvas
    assert_refused(dpl("label", out / "teacher.safetensors", "--data", "clips", "--canvas", "64", "--clips", "4",
                       "-o", tmp_path / "l"), "takes 1x48x48", "1x64x64")
    assert not (tmp_path / "l").exists()
    # a body expert (15 joints) cannot serve figures of 32 keypoints
    r = dpl("teach", "--data", "poses", "--canvas", "48", "--pose-scale", "0.8,0.95", "--poses", "16",
            "--test-poses", "4", "--pose-part", "body", *FAST, "-o", tmp_path / "body.safetensors")
    assert r.code == 0, r
    assert_refused(dpl("label", tmp_path / "body.safetensors", *CLIPS, "-o", tmp_path / "l"),
                   "15 keypoints", "keypoint sets differ")
    # a classifier is no pose teacher
    r = dpl("teach", "--data", "digits", "--arch", "cnn-s", "--epochs", "1", "--device", "cpu", "-o",
            tmp_path / "c.safetensors")
    assert r.code == 0, r
    assert_refused(dpl("label", tmp_path / "c.safetensors", *CLIPS, "-o", tmp_path / "l"), "keypoint teacher")
    # few-shot asks for more labeled clips than a class has (2 of each of 10 actions in 20 clips)
    assert_refused(dpl("eval", out / "student.safetensors", *CLIPS, "--few-shot", "3"), "--few-shot 3")
    # pose options on clips, clip options elsewhere
    assert_refused(dpl("distill", "--labels", out / "labels", *FAST, "--kd-decay", "-o", tmp_path / "x"),
                   "--kd-decay")


def test_few_shot_by_hand():
    # two classes, two support clips each of T=2 frames and D=1: pooled = [mean, std, mean |change|]
    support = torch.tensor([[[0.], [0.]], [[2.], [2.]], [[10.], [12.]], [[10.], [14.]]])
    labels = torch.tensor([0, 0, 1, 1])
    pooled = video.pooled(support)
    assert pooled.tolist() == [[0, 0, 0], [2, 0, 0], [11, 1, 2], [12, 2, 4]]
    # standardised by the support set: mean (6.25, .75, 1.5), std of each column
    query = torch.tensor([[[1.], [1.]], [[11.], [13.]]])
    found = video.few_shot(support, labels, query, torch.tensor([0, 1]), shots=2, episodes=1)
    assert found["accuracy"] == 1.0
    # one shot: a query nearer the other class's single clip is wrong
    q = video.pooled(torch.tensor([[[11.], [11.]]]))
    s = pooled[[1, 2]]
    mean, std = s.mean(0), s.std(0, unbiased=False)
    d = ((q - mean) / std - (s - mean) / std).norm(dim=1)
    assert video.nearest_centroid(s, torch.tensor([0, 1]), q, 2).item() == int(d.argmin())


def test_normalised_pose():
    coords = torch.tensor([[[0., 0.], [4., 2.], [100., 100.]]])
    valid = torch.tensor([[True, True, False]])
    pose = video.normalised_pose(coords, valid)
    assert torch.allclose(pose[0, :2], torch.tensor([[-.5, -.25], [.5, .25]]))
