"""Unsupervised landmarks (dpl landmarks; Jakab et al. 2018): the Gaussian bottleneck, the keypoint regression on a
planted case, training through the CLI on tiny clips (loss falling, checkpoint written and reloaded, the random
baseline of --epochs 0), a classifier as the perceptual network, and the refusals."""

import numpy as np
import pytest
import torch

from conftest import assert_refused, assert_usage_error, dpl
from dpl.core import DplError, artifacts, models
from dpl.core.methods import landmarks as L
from dpl.core.reporting import records

TINY = ("--clips", "16", "--test-clips", "8", "--frames", "4", "--canvas", "32", "--device", "cpu")
FAST = ("--batch-size", "8", "--log-every", "1", "--lr", "0.003", "--landmarks", "4")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("landmarks") / "lm.safetensors"
    r = dpl("landmarks", *TINY, *FAST, "--epochs", "5", "-o", out)
    assert r.code == 0, r
    return out, r


# ---- the bottleneck ------------------------------------------------------------------------------------

def test_gaussian_maps_peak_at_the_landmarks_and_soft_argmax_reads_them_back():
    side = 8                                             # cell j's centre at (2j + 1) / 8 - 1
    points = torch.tensor([[[-0.375, 0.625], [0.125, -0.875]]])      # cells (x 2, y 6) and (x 4, y 0)
    maps = L.gaussian_maps(points, side, 0.1)
    assert maps.shape == (1, 2, side, side)
    assert maps[0, 0, 6, 2] == pytest.approx(1.0) and maps[0, 1, 0, 4] == pytest.approx(1.0)
    assert [divmod(int(m.argmax()), side) for m in maps[0]] == [(6, 2), (0, 4)]
    # a neighbouring cell, 0.25 away: exp(-0.25^2 / (2 * 0.1^2))
    assert maps[0, 0, 6, 3] == pytest.approx(np.exp(-0.0625 / 0.02), rel=1e-5)
    # off the cells: the softmax of the log-maps (a normalised Gaussian away from the borders) has the point as mean
    inner = torch.tensor([[[0.13, -0.21], [-0.4, 0.37], [0.0, 0.05]]])
    found, spread = L.soft_argmax(torch.log(L.gaussian_maps(inner, 32, 0.1)))
    assert torch.allclose(found, inner, atol=1e-4)
    assert torch.allclose(spread, torch.full((1, 3), 0.1 * 2 ** 0.5), atol=2e-3)   # sqrt(var x + var y)


def test_the_network_renders_its_own_landmarks_at_every_decoder_size():
    torch.manual_seed(0)
    net = L.LandmarkNet(landmarks=3, channels=1, image_size=32, width=4).eval()
    frames = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    x = net.normalise(frames)
    recon, points, _ = net(x, x.flip(0))
    assert recon.shape == x.shape and points.shape == (2, 3, 2) and points.abs().max() <= 1
    assert torch.equal(L.landmark_points(net, frames), points)
    for side in (8, 16, 32):                             # the maps the decoder's stages see
        maps = L.gaussian_maps(points, side, net.sigma)
        peak = maps.flatten(2).argmax(-1)
        centres = L.cell_centres(side)
        at = torch.stack([centres[peak % side], centres[peak // side]], -1)
        assert (at - points).abs().max() <= 1 / side + 1e-6      # the peak is the cell holding the point


# ---- the regression --------------------------------------------------------------------------------------

def _frames(rng, n, k, joints, planted, bias):
    """Landmarks, and keypoints that are a planted linear map of them in box-normalised coordinates."""
    x = torch.from_numpy(rng.uniform(-1, 1, (n, k, 2)))
    lo = torch.from_numpy(rng.uniform(0, 20, (n, 2)))
    boxes = torch.cat([lo, lo + torch.from_numpy(rng.uniform(10, 40, (n, 2)))], 1)
    centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]).amax(1)
    y = (x.reshape(n, -1) @ planted + bias).reshape(n, joints, 2)
    kp = torch.zeros(n, joints + 2, 3)                   # two more keypoints, not regressed
    kp[:, :joints, :2] = (centre[:, None] + size[:, None, None] * y).float()
    kp[..., 2] = 2
    return x.float(), kp, boxes.float()


def test_keypoint_regression_recovers_a_planted_linear_map():
    rng = np.random.default_rng(0)
    k, joints = 5, 3
    planted = torch.from_numpy(rng.normal(0, 0.1, (2 * k, 2 * joints)))
    bias = torch.from_numpy(rng.normal(0, 0.1, 2 * joints))
    train = _frames(rng, 200, k, joints, planted, bias)
    test = _frames(rng, 50, k, joints, planted, bias)
    test[1][:5, 0] = torch.tensor([999., -999., 0.])     # not labelled: left out of the error
    train[1][:7, 1] = torch.tensor([-999., 999., 0.])    # and of the fit
    found = L.keypoint_regression(*train, *test, joints=range(joints), ridge=0.0)
    assert found["error"] < 1e-4 and found["train_error"] < 1e-4
    assert found["mean_pose_error"] > 0.05 and len(found["per_joint"]) == joints
    # a ridge shrinks the map a little: the error grows, and stays small
    assert 1e-4 < L.keypoint_regression(*train, *test, joints=range(joints), ridge=0.01)["error"] < 0.02


def test_keypoint_regression_by_hand():
    """Constant landmarks: the regressor predicts the mean training pose. Box (0, 0, 10, 10): centre (5, 5), size
    10; training joints at (7, 5) and (5, 5) -> (0.2, 0) and (0, 0), mean (0.1, 0); a test joint at (6, 8) ->
    (0.1, 0.3): error 0.3."""
    box = torch.tensor([[0., 0., 10., 10.]])
    x = torch.zeros(2, 1, 2)
    train_kp = torch.tensor([[[7., 5., 2.]], [[5., 5., 1.]]])
    test_kp = torch.tensor([[[6., 8., 2.]]])
    found = L.keypoint_regression(x, train_kp, box.expand(2, 4), x[:1], test_kp, box, joints=[0], ridge=1e-3)
    assert found["error"] == pytest.approx(0.3) and found["mean_pose_error"] == pytest.approx(0.3)
    assert found["train_error"] == pytest.approx(0.1) and found["per_joint"] == [pytest.approx(0.3)]


# ---- through the CLI -------------------------------------------------------------------------------------

def test_landmarks_train_with_a_falling_loss_and_write_a_checkpoint_that_reloads(trained):
    out, r = trained
    assert r.stdout.strip() == str(out) and "landmark regression error" in r.stderr
    steps = [rec for rec in records.read_log(records.log_path(out)) if rec["event"] == "step"]
    assert len(steps) >= 4 and steps[-1]["loss"] < 0.85 * steps[0]["loss"], [s["loss"] for s in steps]
    assert {"pixel", "perceptual", "spread"} <= set(steps[0])
    meta = artifacts.read_header(out).meta
    assert meta["task"] == "landmarks" and meta["num_classes"] == 4 and meta["arch"]["sigma"] == 0.1
    section = meta["landmarks"]
    assert section["landmarks"] == 4 and section["map_size"] == 8 and section["image_size"] == 32
    assert section["perceptual"]["kind"] == "random" and section["perceptual"]["seed"] == 0
    assert meta["data"]["spec"] == "clips:train" and meta["data"]["clips"]["frames"] == 4
    m = meta["metrics"]
    assert 0 < m["regression_error"] < 1 and m["regression_frames"] == {"fit": 64, "test": 32}
    assert len(meta["history"]) == 5
    net, ckpt = L.load_landmarks(out)
    assert set(ckpt.objective_state()) == {f"perceptual.convs.{i}.weight" for i in range(3)}
    fixed = L.RandomFeatures(1, 0)                       # the random net is a function of its seed
    assert torch.equal(ckpt.objective_state()["perceptual.convs.1.weight"], fixed.convs[1].weight)
    from dpl.core.data.clip_figures import ClipSpec, build_clips

    clips = build_clips(ClipSpec(canvas=32, count=16, test_count=8, frames=4), "test")
    found = L.measure(net, build_clips(ClipSpec(canvas=32, count=16, test_count=8, frames=4), "train"), clips,
                      frames=4, ridge=1e-3)
    assert found["error"] == pytest.approx(m["regression_error"], abs=1e-5)   # the reloaded net measures the same
    points = L.landmark_points(net, clips.frames([0, 1], [[0], [3]])[:, 0])
    assert points.shape == (2, 4, 2) and points.abs().max() <= 1


def test_epochs_0_writes_the_random_baseline(tmp_path):
    out = tmp_path / "base.safetensors"
    r = dpl("landmarks", *TINY, *FAST, "--epochs", "0", "-o", out)
    assert r.code == 0 and "landmark regression error" in r.stderr, r
    meta = artifacts.read_header(out).meta
    assert meta["history"] == [] and meta["weights"]["epochs"] == 0 and 0 < meta["metrics"]["regression_error"]
    assert "train_loss" not in meta["metrics"]


def test_a_classifier_checkpoint_as_the_perceptual_network(tmp_path):
    spec = models.arch_spec("cnn-s", num_classes=2, in_channels=1, image_size=16)
    classifier = tmp_path / "c.safetensors"
    artifacts.save_checkpoint(classifier, models.build(spec), {
        "arch": spec, "num_classes": 2, "classes": ["a", "b"], "input": artifacts.input_meta(1, 16, [0.5], [0.25])})
    out = tmp_path / "lm.safetensors"
    r = dpl("landmarks", *TINY, *FAST, "--epochs", "1", "--perceptual", classifier, "-o", out)
    assert r.code == 0, r
    meta = artifacts.read_header(out).meta
    made = meta["landmarks"]["perceptual"]
    assert made["kind"] == "checkpoint" and made["layers"] and made["size"] == 16
    assert meta["parents"][0]["role"] == "perceptual" and meta["parents"][0]["sha256"] == made["sha256"]
    assert not artifacts.load_checkpoint(out, task="landmarks").objective_state()     # nothing of it is kept


def test_clips_without_keypoints_train_and_skip_the_evaluation(tmp_path):
    out = tmp_path / "moving.safetensors"
    r = dpl("landmarks", "--data", "moving:digits", *TINY, *FAST, "--epochs", "1", "-o", out)
    assert r.code == 0 and "no true keypoints: the landmark regression is skipped" in r.stderr, r
    assert "regression_error" not in artifacts.read_header(out).meta["metrics"]


# ---- refusals -----------------------------------------------------------------------------------------------

def test_bad_input_is_refused_in_one_line(tmp_path):
    out = tmp_path / "x.safetensors"
    assert_refused(dpl("landmarks", "--data", "digits", "-o", out), "--data digits", "clips")
    assert_refused(dpl("landmarks", "--data", "poses", "-o", out), "clips")
    assert_usage_error(dpl("landmarks", "--landmarks", "0", "-o", out), "--landmarks")
    assert_refused(dpl("landmarks", *TINY[:4], "--frames", "1", "-o", out), "--frames")
    assert_refused(dpl("landmarks", "--data", "clipfolder:/nowhere", "--clips", "3", "-o", out), "--clips",
                   "synthetic clips")
    assert_refused(dpl("landmarks", *TINY, "--canvas", "30", "--epochs", "0", "-o", out), "multiple of 4")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert_refused(dpl("landmarks", *TINY, "--perceptual", bad, "--epochs", "0", "-o", out), str(bad))
    assert not out.exists()
    with pytest.raises(DplError, match="--landmarks"):
        L.LandmarkOptions(landmarks=0)


def test_clips_shorter_than_two_frames_are_refused():
    from dpl.core.data.clips import ClipSet

    class OneFrame(ClipSet):
        def _frames(self, rows, times):
            return torch.zeros(len(rows), times.shape[1], 1, 8, 8, dtype=torch.uint8)

    short = OneFrame(spec="clipfolder:x", record={"spec": "clipfolder:x", "n": 2}, lengths=np.array([1, 1]),
                     labels=torch.tensor([-1, -1]), classes=[], channels=1, size=8)
    from dpl.core.engine.train import TrainConfig, runtime

    with pytest.raises(DplError, match="no clip has the 2 frames"):
        L.train_landmarks(short, L.LandmarkOptions(), TrainConfig(epochs=0), runtime("cpu"))
    assert isinstance(L.evaluation_clips(short), str)        # no keypoints: no evaluation
