"""Consistent-view offline KD: `dpl label --views K` stores K crops and flips per sample with the teacher's output on
each, and `dpl distill --labels` replays them (what the student sees is what the teacher saw)."""

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_refused, dpl
from dpl.core import artifacts
from dpl.core.data import augment
from dpl.core.methods import distill as distillation

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_stored_view_is_the_planted_crop_and_flip():
    image = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4)
    padded = torch.nn.functional.pad(image, (1, 1, 1, 1))
    # offsets (row 0, column 2) of the image padded by 1: rows -1..2, columns 1..4 of the image
    view = augment.view_of(image, 1, torch.tensor([[0, 2]]), torch.tensor([0]))
    assert torch.equal(view, padded[:, :, 0:4, 2:6])
    assert view[0, 0, 0].tolist() == [0, 0, 0, 0] and view[0, 0, 1].tolist() == [2, 3, 4, 0]
    flipped = augment.view_of(image, 1, torch.tensor([[2, 0]]), torch.tensor([1]))
    assert torch.equal(flipped, padded[:, :, 2:6, 0:4].flip(-1))
    # replay without RandAugment is the view itself; the random crop draws the same geometry
    noise = augment.Noise(crop_pad=1, hflip=True)
    assert torch.equal(augment.replay(image, noise, torch.tensor([[0, 2]]), torch.tensor([0])), view)


def test_views_depend_on_the_seed_and_the_sample_alone():
    offsets, flips = augment.sample_views(50, 4, 3, True, seed=7)
    again, again_flips = augment.sample_views(50, 4, 3, True, seed=7)
    assert torch.equal(offsets, again) and torch.equal(flips, again_flips)
    assert offsets.shape == (50, 4, 2) and offsets.dtype == torch.int16 and 0 <= offsets.min() and offsets.max() <= 6
    assert 0 < flips.float().mean() < 1
    assert not augment.sample_views(50, 4, 3, False, seed=7)[1].any()
    assert not torch.equal(augment.sample_views(50, 4, 3, True, seed=8)[0], offsets)


def test_replay_shows_each_view_once_every_k_epochs():
    views = artifacts.LabelViews({"count": 3}, torch.zeros(5, 3, 2, dtype=torch.int16), torch.zeros(5, 3, dtype=torch.uint8))
    replay = distillation.ViewReplay(views, torch.arange(5), seed=0, device="cpu")
    seen = torch.stack([replay.pick(torch.arange(5), epoch)[0] for epoch in range(3)])
    assert (seen.sort(dim=0).values == torch.arange(3)[:, None]).all()
    assert torch.equal(replay.pick(torch.arange(5), 3)[0], seen[0])


@pytest.fixture(scope="module")
def view_labels(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("views") / "labels"
    r = dpl("label", teacher, "--views", "3", "--view-seed", "5", "--device", "cpu", "-o", out, "--json")
    assert r.code == 0, r
    return out, json.loads(r.stdout)


def test_views_round_trip_and_each_stored_output_is_the_teachers_on_that_view(teacher, view_labels):
    folder, done = view_labels
    labels = artifacts.read_labels(folder)
    views = labels.views
    assert views.meta == {"format": 1, "count": 3, "crop_pad": 1, "hflip": False, "size": 8, "seed": 5}
    n = len(labels)
    assert views.offset.shape == (n, 3, 2) and views.flip.shape == (n, 3) and views.probs.shape == (n, 3, 10)
    assert labels.probs.shape == (n, 10)          # the un-augmented image's labels are there too
    expected, _ = augment.sample_views(n, 3, 1, False, seed=5)
    assert torch.equal(views.offset, expected)
    # 2 bytes x 2 offsets + 1 flip + 10 float16 probabilities
    assert done["views"] == 3 and done["view_bytes_per_sample_view"] == pytest.approx(25.0)
    # the teacher run again on the stored crops gives the stored outputs
    from dpl.core import data

    ckpt = artifacts.load_checkpoint(teacher)
    model = ckpt.build_model().eval()
    images = data.load("digits").images[labels.index[:64]]
    with torch.inference_mode():
        for v in range(3):
            x = augment.view_of(images, 1, views.offset[:64, v], views.flip[:64, v])
            probs = model(augment.to_input(x, ckpt.input["mean"], ckpt.input["std"])).softmax(1)
            assert torch.allclose(probs, views.probs[:64, v].float(), atol=2e-3)
    plain = model(augment.to_input(images, ckpt.input["mean"], ckpt.input["std"])).softmax(1).detach()
    assert torch.allclose(plain, labels.probs[:64].float(), atol=2e-3)
    assert not torch.allclose(views.probs[:, 0].float(), labels.probs.float(), atol=1e-3)


def test_topk_view_labels_round_trip(teacher, tmp_path):
    r = dpl("label", teacher, "--views", "2", "--topk", "3", "--device", "cpu", "-o", tmp_path / "l")
    assert r.code == 0, r
    labels = artifacts.read_labels(tmp_path / "l")
    assert labels.views.topk_index.shape == (len(labels), 2, 3) and labels.views.probs is None
    assert labels.views.bytes_per_view() == pytest.approx(2 * 2 + 1 + 3 * 4 + 3 * 2)


DISTILL = ["distill", "--arch", "cnn-s", "--epochs", "3", "--alpha", "0.5", "--seed", "1", "--device", "cpu"]


def test_offline_kd_on_stored_views_runs_end_to_end(view_labels, tmp_path):
    folder, _ = view_labels
    out = tmp_path / "s.safetensors"
    r = dpl(*DISTILL, "--labels", folder, "--randaugment", "1,5", "-o", out)
    assert r.code == 0, r
    meta = artifacts.read_header(out, kind="checkpoint").meta
    assert meta["distill"]["views"] == 3 and meta["distill"]["true_labels"]
    assert meta["metrics"]["test_top1"] > 0.5


def test_resume_mid_epoch_replays_the_same_views(view_labels, tmp_path, monkeypatch):
    folder, _ = view_labels
    whole = tmp_path / "whole.safetensors"
    assert dpl(*DISTILL, "--labels", folder, "-o", whole).code == 0
    calls = {"n": 0}
    real = augment.replay

    def stop_in_epoch_two(*args):
        calls["n"] += 1
        if calls["n"] == 14:          # 10 steps an epoch: the 4th step of epoch 2
            signal.raise_signal(signal.SIGTERM)
        return real(*args)

    out = tmp_path / "resumed.safetensors"
    monkeypatch.setattr(augment, "replay", stop_in_epoch_two)
    r = dpl(*DISTILL, "--labels", folder, "-o", out)
    assert r.code == 143 and not out.exists(), r
    monkeypatch.setattr(augment, "replay", real)
    r = dpl(*DISTILL, "--labels", folder, "-o", out, "--resume")
    assert r.code == 0, r
    a, b = load_file(str(whole)), load_file(str(out))
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()) <= 1e-6


def test_bad_view_requests_are_refused_before_labeling(teacher, tmp_path):
    out = tmp_path / "l"
    assert_refused(dpl("label", teacher, "--views", "0", "-o", out), "--views", "1..256")
    assert_refused(dpl("label", teacher, "--views", "100000", "-o", out), "--views", "100000")
    assert_refused(dpl("label", teacher, "--views", "2", "--hard", "-o", out), "--views", "--hard")
    assert_refused(dpl("label", teacher, "--no-crop", "-o", out), "--no-crop", "--views")
    # digits take no flip: without the crop there would be nothing to store
    assert_refused(dpl("label", teacher, "--views", "2", "--no-crop", "-o", out), "flip", "--no-crop")
    assert not out.exists()


def test_views_of_another_size_or_crop_are_refused_naming_both(view_labels, tmp_path):
    folder, _ = view_labels
    out = tmp_path / "s.safetensors"
    assert_refused(dpl(*DISTILL, "--labels", folder, "--resize", "16", "-o", out), "8 px", "16 px", "--resize 8")
    assert_refused(dpl(*DISTILL, "--labels", folder, "--no-crop", "-o", out), "padding by 1", "uncropped")
    assert not out.exists()


def test_view_labels_of_another_format_are_refused_in_one_line(view_labels, tmp_path):
    folder, _ = view_labels
    old = tmp_path / "old"
    old.mkdir()
    for shard in folder.glob("shard-*.safetensors"):
        header = artifacts.read_header(shard, kind="labels")
        meta = {**header.meta, "views": {**header.meta["views"], "format": 0}}
        artifacts.save(old / shard.name, artifacts.load_tensors(header), "labels",
                       {k: v for k, v in meta.items() if not k.startswith("dpl.")})
    out = tmp_path / "s.safetensors"
    assert_refused(dpl(*DISTILL, "--labels", old, "-o", out), "format 0", "format 1", "--views")
    assert not out.exists()


def test_re_tempering_up_says_how_many_probabilities_float16_lost(teacher, tmp_path):
    labels = tmp_path / "t1"
    assert dpl("label", teacher, "--device", "cpu", "-o", labels).code == 0
    zeros = float((artifacts.read_labels(labels).probs == 0).float().mean())
    r = dpl("distill", "--labels", labels, "--arch", "cnn-s", "--epochs", "1", "--tau", "4", "--device", "cpu",
            "-o", tmp_path / "s.safetensors")
    assert r.code == 0, r
    said = [line for line in r.stderr.splitlines() if "underflowed float16" in line]
    assert bool(said) == (zeros > 0), (zeros, r.stderr)
    if said:
        assert f"{100 * zeros:.1f}%" in said[0] and "--tau 4" in said[0]
    r = dpl("distill", "--labels", labels, "--arch", "cnn-s", "--epochs", "1", "--tau", "0.5", "--device", "cpu",
            "-o", tmp_path / "s2.safetensors")
    assert r.code == 0 and "underflowed" not in r.stderr, r
