"""Self-supervision from time (core/methods/pretext/temporal.py): the questions of order, odd-one-out and tracking on
planted clips, the tracker against a square moving by a known step, the triplet loss by hand, and each task trained
through `dpl pretrain` on tiny clips into a backbone that `dpl teach --init` takes."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import assert_refused, dpl
from dpl.core import catalog, models
from dpl.core.data import clips as clip_data
from dpl.core.data.clips import ClipSet
from dpl.core.methods import pretext

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(eq=False)
class Planted(ClipSet):
    """Clips whose frame t is filled with value(t) (uint8), every pixel alike."""

    value: object = None

    def _frames(self, rows, times):
        v = torch.from_numpy(self.value(np.asarray(times)).astype(np.uint8))        # (n, m)
        return v[:, :, None, None, None].expand(-1, -1, self.channels, self.size, self.size).clone()


def planted(n: int, length: int, value) -> Planted:
    return Planted(spec="planted", record={"spec": "planted", "n": n}, lengths=np.full(n, length, dtype=np.int64),
                   labels=torch.full((n,), -1), classes=[], channels=1, size=8, value=value)


def monotonic(v: np.ndarray) -> bool:
    d = np.diff(v)
    return bool((d > 0).all() or (d < 0).all())


def test_order_tuples_in_order_are_labeled_so_and_windows_follow_motion():
    clips = planted(6, 12, lambda t: t * 10)
    motion = pretext.motion_profile(clips)
    assert motion.shape == (6, 12) and (motion[:, 0] == 0).all() and np.allclose(motion[:, 1:], 10)
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(6), 40)
    times, labels = pretext.order_tuples(clips.lengths, motion, rows, 5, rng)
    values = clips.frames(rows, times)[:, :, 0, 0, 0].numpy().astype(int)
    assert 0.35 < labels.mean() < 0.65
    for v, t, label in zip(values, times, labels):
        assert monotonic(v) == bool(label), (t, label)
        assert abs(int(t[2]) - int(t[0])) == 4                         # a and c: the window's ends
    # a clip still for its first 8 frames: every window drawn holds some of its motion
    still = planted(4, 16, lambda t: np.maximum(t - 8, 0) * 20)
    times, _ = pretext.order_tuples(still.lengths, pretext.motion_profile(still), np.repeat(np.arange(4), 50), 5, rng)
    assert (times.max(1) >= 9).all()


def test_the_odd_sequence_is_the_shuffled_one():
    clips = planted(5, 16, lambda t: t * 10)
    rng = np.random.default_rng(1)
    rows = np.repeat(np.arange(5), 30)
    times, odd = pretext.odd_sequences(clips.lengths, rows, 3, 4, rng)
    assert times.shape == (150, 3, 4) and set(odd.tolist()) == {0, 1, 2}
    values = clips.frames(rows, times.reshape(150, -1))[:, :, 0, 0, 0].numpy().astype(int).reshape(150, 3, 4)
    for v, answer in zip(values, odd):
        for k in range(3):
            assert (np.diff(v[k]) > 0).all() == (k != answer)
        assert not monotonic(v[answer])                               # never the order reversed either
    for _ in range(50):
        p = pretext.odd_permutation(3, rng)
        assert sorted(p) == [0, 1, 2] and not monotonic(p)


def square_clip(dx: int, dy: int, frames: int = 6, side: int = 48, c: int = 1, seed: int = 0):
    """uint8 (1, frames, C, side, side): an 8 px bright square moving by (dx, dy) a frame over noise; its corners."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 100, (1, frames, c, side, side), generator=g, dtype=torch.uint8)
    corners = torch.tensor([[20 + t * dy, 20 + t * dx] for t in range(frames)])
    for t, (y, x0) in enumerate(corners.tolist()):
        x[0, t, :, y:y + 8, x0:x0 + 8] = 250
    return x, corners


@pytest.mark.parametrize("dx, dy, c", [(2, 1, 1), (-3, 2, 3), (0, -2, 1)])
def test_the_tracker_follows_a_moving_square_from_pixels(dx, dy, c):
    x, corners = square_clip(dx, dy, c=c)
    box = 16                                  # the box holds the square and the noise around it
    start = corners[:1] - 4                   # the square in the box's middle
    boxes = pretext.track(x, start, box, radius=4)
    assert boxes.shape == (1, 6, 2)
    assert (boxes[0] - (corners - 4)).abs().max() <= 1, (boxes[0], corners - 4)
    # the query box is placed where frame 1 differs from frame 0: on the square
    sy, sx = corners[1].tolist()
    for u in torch.linspace(0, 0.999, 25):
        y, x0 = pretext.moving_box(x[:, 0], x[:, 1], box, u[None])[0].tolist()
        overlap = max(0, min(y + box, sy + 8) - max(y, sy)) * max(0, min(x0 + box, sx + 8) - max(x0, sx))
        assert overlap >= 32, (y, x0, sy, sx)                  # at least half the square


def test_ncc_is_one_where_the_template_is_and_the_triplet_loss_is_its_formula():
    torch.manual_seed(0)
    window = torch.rand(2, 3, 20, 20)
    template = window[:, :, 5:13, 7:15].clone()
    score = pretext.ncc(window, template)
    assert score.shape == (2, 13, 13)
    assert torch.allclose(score[:, 5, 7], torch.ones(2), atol=1e-4) and (score <= 1 + 1e-4).all()
    assert (score.flatten(1).argmax(1) == 5 * 13 + 7).all()
    q, p, n = torch.randn(3, 7, 5).unbind(0)
    loss, acc = pretext.triplet_cosine(q, p, n, 0.5)
    by_hand = [max(0.0, (1 - float(q[i] @ p[i] / (q[i].norm() * p[i].norm())))
                   - (1 - float(q[i] @ n[i] / (q[i].norm() * n[i].norm()))) + 0.5) for i in range(7)]
    assert abs(float(loss) - sum(by_hand) / 7) < 1e-5
    closer = [float(F.cosine_similarity(q[i:i + 1], p[i:i + 1])) > float(F.cosine_similarity(q[i:i + 1], n[i:i + 1]))
              for i in range(7)]
    assert float(acc) == pytest.approx(sum(closer) / 7)


def test_the_catalog_names_the_clip_tasks_and_sources():
    assert catalog.CLIP_PRETEXT_TASKS == tuple(t.name for t in pretext.TEMPORAL)
    assert catalog.CLIP_SOURCES == clip_data.CLIP_SOURCES


TINY = ("--clips", "8", "--test-clips", "4", "--frames", "8", "--canvas", "32", "--arch", "cnn-s", "--epochs", "1",
        "--batch-size", "4", "--head-width", "32", "--device", "cpu")


def info(path) -> dict:
    r = dpl("info", path, "--json")
    assert r.code == 0, r
    return json.loads(r.stdout)


@pytest.mark.parametrize("task, data", [("order", "clips"), ("odd-one-out", "clips"), ("tracking", "moving:digits")])
def test_each_task_trains_through_the_cli_and_writes_a_backbone(tmp_path, task, data):
    out = tmp_path / f"{task}.safetensors"
    r = dpl("pretrain", "--data", data, "--task", task, *TINY, "-o", out)
    assert r.code == 0, r
    assert r.stdout.strip() == str(out) and "held-out clips" in r.stderr
    meta = info(out)
    assert meta["pretext"]["task"] == task and len(meta["history"]) == 1
    assert 0 <= meta["metrics"]["pretext_test_acc"] <= 1 and meta["pretext"]["held_out"]["clips"] == 4
    assert meta["data"]["spec"].startswith(data.split(":")[0]) and meta["input"]["size"] == 32
    assert meta["arch"] == models.arch_spec("cnn-s", num_classes=1, in_channels=1, image_size=32)
    tensors = load_file(str(out))
    assert {k for k in tensors if not k.startswith("objective.")} == set(models.build(meta["arch"]).state_dict())
    assert any(k.startswith("objective.head.") for k in tensors)
    if task == "order":
        tuned = tmp_path / "tuned.safetensors"
        r = dpl("teach", "--init", out, "--data", "digits", "--resize", "32", "--labeled-per-class", "5", "--arch",
                "cnn-s", "--epochs", "1", "--device", "cpu", "-o", tuned)
        assert r.code == 0, r
        assert info(tuned)["parents"][0]["role"] == "init"


def test_a_clip_folder_trains_its_short_clips_left_out_and_counted(tmp_path):
    from PIL import Image

    from dpl.core.data.clip_figures import ClipSpec

    root = tmp_path / "folder"
    for split, n in (("train", 8), ("test", 4)):
        made = clip_data.load_clips("clips", split, ClipSpec(count=8, test_count=4, frames=8, canvas=32))
        for i in range(n):
            frames = made.clip(i).numpy()
            (root / split / f"clip{i}").mkdir(parents=True)
            for t in range(8 if i % 4 else 5):                    # clips 0 and 4 too short for order's 6 frames
                Image.fromarray(frames[t, 0]).save(root / split / f"clip{i}" / f"{t:03d}.png")
    out = tmp_path / "folder.safetensors"
    r = dpl("pretrain", "--data", f"clipfolder:{root}", "--task", "order", "--arch", "cnn-s", "--epochs", "1",
            "--batch-size", "3", "--head-width", "32", "--device", "cpu", "-o", out)
    assert r.code == 0, r
    assert "2 of 8 clips shorter than the 6 frames --task order needs skipped" in r.stderr
    assert "held-out 1 of 4 clips shorter" in r.stderr
    meta = info(out)
    assert meta["data"]["n"] == 6 and meta["data"]["short"] == 2 and meta["data"]["split"] == "train"
    assert meta["pretext"]["held_out"]["clips"] == 3 and meta["pretext"]["held_out"]["short"] == 1
    assert meta["input"]["size"] == 32 and meta["input"]["channels"] == 1
    assert_refused(dpl("pretrain", "--data", f"clipfolder:{root}", "--frames", "8", "-o", tmp_path / "x.safetensors"),
                   "--frames", "synthetic clips")


def test_what_cannot_apply_is_refused_in_one_line(tmp_path):
    out = tmp_path / "x.safetensors"
    # clips too short for the task
    assert_refused(dpl("pretrain", "--data", "clips", "--task", "order", *TINY, "--frames", "5", "-o", out),
                   "6 frames", "--task order")
    assert_refused(dpl("pretrain", "--data", "clips", "--task", "odd-one-out", *TINY, "--frames", "4",
                       "--sequence-frames", "5", "-o", out), "5 frames")
    assert_refused(dpl("pretrain", "--data", "clips", "--task", "rotation", *TINY, "-o", out), "--task rotation",
                   "order")
    assert_refused(dpl("pretrain", "--data", "digits", "--task", "order", "--device", "cpu", "-o", out), "clips")
    assert_refused(dpl("pretrain", "--data", "digits", "--clips", "8", "--device", "cpu", "-o", out), "--clips")
    assert_refused(dpl("pretrain", "--data", "digits", "--track-gap", "2", "--device", "cpu", "-o", out), "--track-gap")
    assert_refused(dpl("pretrain", "--data", "clips", *TINY, "--resize", "16", "-o", out), "--resize")
    assert_refused(dpl("pretrain", "--data", "clips", *TINY, "--no-crop", "-o", out), "--no-crop")
    assert_refused(dpl("pretrain", "--data", "clips", *TINY, "--poses", "10", "-o", out), "--poses")
    assert_refused(dpl("pretrain", "--data", "clips", *TINY, "--tuple-window", "2", "-o", out), "--tuple-window")
    assert_refused(dpl("pretrain", "--data", "clips", "--task", "odd-one-out", *TINY, "--sequence-frames", "2",
                       "-o", out), "--sequence-frames")
    assert not out.exists()
