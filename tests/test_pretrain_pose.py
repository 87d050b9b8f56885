"""dpl pretrain on the figures of poses: SimCLR and PeCLR (Spurr et al., ICCV'21) write a backbone that a keypoint
model fine-tunes from; PeCLR's views and the map that undoes their geometry on the projection are exact."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_refused, dpl
from dpl.core import losses, models
from dpl.core.methods import pretext

pytestmark = pytest.mark.usefixtures("one_thread")

POSES = ("--data", "poses", "--poses", "32", "--canvas", "32", "--pose-scale", "0.92,0.95")
FAST = ("--arch", "cnn-s", "--epochs", "1", "--batch-size", "16", "--device", "cpu")


def info(path) -> dict:
    r = dpl("info", path, "--json")
    assert r.code == 0, r
    return json.loads(r.stdout)


@pytest.mark.parametrize("task", ["simclr", "peclr"])
def test_pretrain_on_poses_writes_a_backbone_that_a_keypoint_model_takes(tmp_path, task):
    out = tmp_path / f"{task}.safetensors"
    r = dpl("pretrain", "--task", task, *POSES, *FAST, "-o", out)
    assert r.code == 0, r
    meta = info(out)
    assert meta["pretext"]["task"] == task and len(meta["history"]) == 1
    assert math.isfinite(meta["history"][0]["nt_xent"])
    assert meta["data"]["spec"] == "poses:train" and meta["data"]["poses"]["canvas"] == 32 and meta["data"]["n"] == 32
    assert meta["input"]["size"] == 32 and meta["input"]["channels"] == 1
    assert meta["arch"] == models.arch_spec("cnn-s", num_classes=1, in_channels=1, image_size=32)
    if task == "peclr":
        assert meta["pretext"]["geometry"] == {"rotation": 45.0, "scale": [0.8, 1.25], "translate": 0.1}
        assert "crop_scale" not in meta["pretext"]       # PeCLR's views have no random resized crop
    tuned = tmp_path / "kp.safetensors"
    r = dpl("teach", *POSES, "--test-poses", "8", "--labeled", "8", "--init", out, *FAST, "-o", tuned)
    assert r.code == 0, r
    assert info(tuned)["parents"][0]["role"] == "init"


def test_peclr_refuses_what_it_cannot_take(tmp_path):
    out = tmp_path / "x.safetensors"
    # data that is not images to pretrain on: scenes are data with boxes
    assert_refused(dpl("pretrain", "--task", "peclr", "--data", "scenes:digits", *FAST, "-o", out), "data with boxes")
    assert_refused(dpl("pretrain", "--task", "peclr", "--data", "digits", "--canvas", "32", *FAST, "-o", out),
                   "--canvas", "poses")
    assert_refused(dpl("pretrain", "--task", "peclr", *POSES, "--labeled-per-class", "4", *FAST, "-o", out),
                   "--labeled-per-class")
    assert_refused(dpl("pretrain", "--task", "peclr", *POSES, "--projection-dim", "127", *FAST, "-o", out),
                   "--projection-dim", "even")
    assert_refused(dpl("pretrain", "--task", "peclr", *POSES, "--view-scale", "0.1,2", *FAST, "-o", out),
                   "--view-scale")
    assert_refused(dpl("pretrain", "--task", "peclr", *POSES, "--view-rotation", "200", *FAST, "-o", out),
                   "--view-rotation")
    assert not out.exists()


def _similarity(angle_deg: float, zoom: float, mirror: float = 1.0) -> torch.Tensor:
    a = math.radians(angle_deg)
    return zoom * torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ torch.diag(
        torch.tensor([mirror, 1.0]))


def test_the_latent_inverse_is_exact():
    torch.manual_seed(0)
    z = torch.randn(6, 16, dtype=torch.float64)
    linear = torch.stack([_similarity(a, s, m) for a, s, m in
                          [(30, 1.0, 1), (-45, 0.8, 1), (90, 1.25, -1), (0, 1.0, 1), (170, 2.0, -1), (-5, 0.5, 1)]])
    linear = linear.double()
    shift = torch.rand(6, 2, dtype=torch.float64) - 0.5
    # rotating the latent's points by R, then undoing with R^-1, gives it back; so does a shift on top
    rotated = pretext.move_latent(z, linear, torch.zeros(6, 2, dtype=torch.float64))
    expected = (z.reshape(6, 8, 2) @ linear.transpose(1, 2)).reshape(6, 16)
    assert torch.allclose(rotated, expected, atol=1e-12)
    back = pretext.undo_latent(rotated, linear, torch.zeros(6, 2, dtype=torch.float64))
    assert torch.allclose(back, z, atol=1e-12)
    assert torch.allclose(pretext.undo_latent(pretext.move_latent(z, linear, shift), linear, shift), z, atol=1e-12)
    # a pure rotation keeps each point's length: it moves the latent, it does not rescale it
    assert torch.allclose(rotated[0].reshape(8, 2).norm(dim=1), z[0].reshape(8, 2).norm(dim=1), atol=1e-12)
    assert not torch.allclose(rotated[0], z[0], atol=1e-3)
    with pytest.raises(Exception, match="even"):
        pretext.undo_latent(torch.randn(2, 5), linear[:2], shift[:2])


def test_peclr_loss_of_two_views_is_lower_once_their_geometry_is_undone():
    torch.manual_seed(1)
    n, d = 32, 64
    z = F.normalize(torch.randn(n, d), dim=1)            # an equivariant projection of n images
    views = [(torch.stack([_similarity(float(a), float(s), 1.0) for a, s in
                           zip(torch.empty(n).uniform_(-45, 45), torch.empty(n).uniform_(0.8, 1.25))]),
              torch.empty(n, 2).uniform_(-0.1, 0.1)) for _ in range(2)]
    moved = torch.cat([pretext.move_latent(z, a, t) for a, t in views])   # the projections of the two views
    linear, shift = torch.cat([a for a, _ in views]), torch.cat([t for _, t in views])
    undone = pretext.undo_latent(moved, linear, shift)
    assert torch.allclose(undone, torch.cat([z, z]), atol=1e-5)
    assert losses.nt_xent(undone, 0.5) < losses.nt_xent(moved, 0.5) - 0.1


def test_peclr_views_move_the_image_as_their_matrices_say():
    # one bright pixel: where it lands in the view is linear @ p + 2 shift, in units of half the side
    side = 33
    x = torch.zeros(4, 1, side, side, dtype=torch.uint8)
    x[:, 0, 10, 22] = 255                               # row 10, column 22
    plain = pretext.Views(jitter=0.0, grayscale_prob=0.0, blur_prob=0.0)
    geometry = pretext.Geometry(rotation=90.0, scale=(1.0, 1.0), translate=0.1)
    torch.manual_seed(2)
    view, linear, shift = pretext.peclr_view(x, plain, geometry, flip=True)
    assert view.dtype == torch.uint8 and view.shape == x.shape
    p = torch.tensor([(22 + 0.5) / side * 2 - 1, (10 + 0.5) / side * 2 - 1])
    q = linear @ p + 2 * shift                          # (4, 2): x, y of the point in each view
    for i in range(4):
        row, col = divmod(int(view[i, 0].float().flatten().argmax()), side)
        seen = torch.tensor([(col + 0.5) / side * 2 - 1, (row + 0.5) / side * 2 - 1])
        assert torch.allclose(seen, q[i], atol=2.5 / side), (i, seen, q[i])
