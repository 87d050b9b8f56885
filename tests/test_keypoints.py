"""Keypoints: the heatmap network's shapes, strides and rebuilding from its spec; Gaussian targets, the loss and the
read-out (exact on planted Gaussians); the pose noise moving keypoints with the pixels; PCK and COCO keypoint AP on
hand-made cases; and a tiny net learning to find a bright dot (head, targets, loss and decode together)."""

import copy
import math

import numpy as np
import pytest
import torch

from dpl.core import DplError
from dpl.core.methods import keypoints as kp


def points(xy, vis=2.0) -> torch.Tensor:
    """(1, K, 3) keypoints at `xy`, all of visibility `vis`."""
    xy = torch.tensor(xy, dtype=torch.float32)
    return torch.cat([xy, torch.full((len(xy), 1), vis)], 1)[None]


# ---- the model --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch, size, layer, feature_stride, heatmap_stride", [
    ("cnn-s", 32, "stages.2.0", 8, 2), ("cnn-s", 64, "stages.2.0", 8, 4),
    ("resnet8", 32, "stages.2.0", 4, 2), ("resnet8", 64, "stages.2.0", 4, 4)])
def test_model_shapes_and_strides(arch, size, layer, feature_stride, heatmap_stride):
    net = kp.build_keypoint_model(arch, 7, 3, size, head_width=16)
    assert (net.layer, net.feature_stride, net.heatmap_stride) == (layer, feature_stride, heatmap_stride)
    assert net.heatmap_size == size // heatmap_stride
    out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7, size // heatmap_stride, size // heatmap_stride)
    spec = net.spec
    assert spec["arch"]["name"] == arch and spec["arch"]["num_classes"] == 7 and spec["arch"]["image_size"] == size
    assert spec["keypoints"] == {"num_keypoints": 7, "head_width": 16, "layer": layer,
                                 "heatmap_stride": heatmap_stride, "heatmap_size": size // heatmap_stride}


def test_model_rebuilds_from_its_spec_and_copies_read_their_own_backbone():
    torch.manual_seed(0)
    net = kp.build_keypoint_model("resnet8", 3, 1, 32, head_width=8, heatmap_stride=4).eval()
    again = kp.keypoint_model_from_spec(net.spec).eval()
    again.load_state_dict(net.state_dict())
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(net(x), again(x)) and net(x).shape == (2, 3, 8, 8)
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.1)
    assert not torch.equal(twin(x), net(x))
    with pytest.raises(DplError):
        kp.keypoint_model_from_spec({**net.spec, "keypoints": {**net.spec["keypoints"], "heatmap_size": 5}})
    with pytest.raises(DplError):
        kp.build_keypoint_model("cnn-s", 3, 1, 36, heatmap_stride=8)


def test_predict_gives_pixel_coordinates_with_and_without_the_flip_test():
    net = kp.build_keypoint_model("cnn-s", 2, 1, 32, head_width=8)
    coords, conf = kp.predict(net, torch.randn(5, 1, 32, 32), batch_size=2, flip_pairs=[(0, 1)])
    assert coords.shape == (5, 2, 2) and conf.shape == (5, 2) and net.training
    assert ((coords >= 0) & (coords <= 32)).all()


# ---- targets, loss, decode --------------------------------------------------------------------------------

def test_gaussian_targets_peak_on_the_keypoints_cell_and_weigh_labeled_points_inside():
    keypoints = torch.tensor([[[5.0, 9.0, 2], [5.0, 9.0, 1], [math.nan, 9.0, 0], [40.0, 3.0, 2], [-1.0, 3.0, 1]]])
    targets, weights = kp.gaussian_targets(keypoints, 8, 4, sigma=1.0)
    assert targets.shape == (1, 5, 8, 8)
    assert weights.tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]
    assert (targets[0, 2] == 0).all()                               # unlabeled: no target
    # (5, 9) px is (1.25, 2.25) cells: the nearest centre is cell (x 1, y 2), 0.25 cell away on both axes
    assert targets[0, 0].flatten().argmax().item() == 2 * 8 + 1
    assert targets[0, 0, 2, 1].item() == pytest.approx(math.exp(-(0.25 ** 2 + 0.25 ** 2) / 2))
    assert torch.equal(targets[0, 0], targets[0, 1])
    _, kept = kp.gaussian_targets(keypoints, 8, 4, sigma=1.0, outside=True)
    assert kept.tolist() == [[1.0, 1.0, 0.0, 1.0, 1.0]]


def test_heatmap_loss_is_the_mean_mse_over_labeled_keypoints():
    pred, targets = torch.zeros(2, 2, 2, 2), torch.zeros(2, 2, 2, 2)
    targets[0, 0] = 1.0          # MSE 1
    targets[0, 1, 0, 0] = 2.0    # MSE 1
    targets[1, 0] = 3.0          # MSE 9, unlabeled
    weights = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert kp.heatmap_loss(pred, targets, weights).item() == pytest.approx(2 / 3)
    assert kp.heatmap_loss(pred, targets, torch.zeros(2, 2)).item() == 0.0


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_decode_is_exact_at_cell_centres_and_within_a_quarter_cell_between(stride):
    cells = torch.tensor([[3, 4], [7, 2], [10, 10], [1, 13]], dtype=torch.float32)
    centres = (cells + 0.5) * stride
    heat, _ = kp.gaussian_targets(points(centres.tolist()), 16, stride, sigma=2.0)
    coords, conf = kp.decode(heat, stride)
    assert torch.equal(coords[0], centres) and torch.equal(conf[0], torch.ones(4))
    g = torch.Generator().manual_seed(0)
    off = (torch.rand(200, 2, generator=g) - 0.5) * 0.98               # within the nearest cell's half-width
    cell = torch.randint(1, 15, (200, 2), generator=g).float()
    truth = (cell + 0.5 + off) * stride
    heat, _ = kp.gaussian_targets(points(truth.tolist()), 16, stride, sigma=1.5)
    coords, conf = kp.decode(heat, stride)
    assert ((coords[0] - truth).abs() <= 0.25 * stride + 1e-5).all()
    assert ((coords[0] - truth).abs() < (off.abs() * stride) - 1e-4).float().mean() > 0.5   # refinement helps
    assert (conf <= 1).all() and (conf > 0.5).all()


def test_flipped_heatmaps_decode_to_the_mirrored_and_swapped_keypoints():
    keypoints = points([[5.0, 7.0], [21.0, 9.0], [13.0, 29.0]])            # cell centres at stride 2
    heat, _ = kp.gaussian_targets(keypoints, 16, 2, sigma=1.0)
    coords, _ = kp.decode(kp.flip_heatmaps(heat, [(0, 1)]), 2)
    mirrored = torch.stack([32 - keypoints[0, :, 0], keypoints[0, :, 1]], 1)
    assert torch.equal(coords[0], mirrored[[1, 0, 2]])


# ---- noise ------------------------------------------------------------------------------------------------

def blobs(keypoints: torch.Tensor, size: int) -> torch.Tensor:
    """One channel per keypoint: a 3 x 3 bright square centred on the keypoint's pixel (keypoints at centres)."""
    n, k, _ = keypoints.shape
    x = torch.zeros(n, k, size, size)
    for i in range(n):
        for j in range(k):
            cx, cy = int(keypoints[i, j, 0]), int(keypoints[i, j, 1])
            x[i, j, cy - 1: cy + 2, cx - 1: cx + 2] = 1.0
    return x


def centroids(images: torch.Tensor) -> torch.Tensor:
    """(N, C, 2) intensity centroids in the pixel convention (pixel i's centre at i + 0.5)."""
    _, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    mass = images.sum((2, 3)).clamp(min=1e-9)
    return torch.stack([(images * xs).sum((2, 3)) / mass, (images * ys).sum((2, 3)) / mass], -1)


def test_a_fixed_flip_rotation_and_scale_move_a_bright_pixel_where_its_keypoint_goes():
    size = 48
    keypoints = points([[20.5, 14.5]]).repeat(4, 1, 1)
    x = torch.zeros(4, 1, size, size)
    x[:, 0, 14, 20] = 1.0                                                # a single bright pixel
    angle, scale = torch.tensor([0.0, 0.0, 30.0, 0.0]), torch.tensor([1.0, 1.0, 1.0, 1.5])
    flipped = torch.tensor([False, True, False, False])
    m = kp.pose_matrices(size, size, angle, scale, torch.zeros(4, 2), flipped)
    out, moved = kp.warp_poses(x, keypoints, m, flipped, [])
    assert torch.allclose(moved[0], keypoints[0]) and torch.allclose(out[0], x[0], atol=1e-5)     # the identity
    assert torch.allclose(out[1], x[1].flip(-1), atol=1e-5) and moved[1, 0, 0].item() == pytest.approx(size - 20.5)
    found = centroids(out)[:, 0]
    assert ((found - moved[:, 0, :2]).norm(dim=1) < 1.0).all()
    peak = out.flatten(1).argmax(1)
    assert ((torch.stack([peak % size, peak // size], 1) + 0.5 - moved[:, 0, :2]).abs() <= 1.0).all()


def test_random_pose_noise_moves_every_keypoint_with_its_pixels_and_swaps_left_and_right():
    size, n = 40, 64
    g = torch.Generator().manual_seed(1)
    cells = torch.randint(12, 28, (n, 3, 2), generator=g).float()
    keypoints = torch.cat([cells + 0.5, torch.full((n, 3, 1), 2.0)], -1)
    x = blobs(keypoints, size)
    out, moved = kp.pose_noise(x, keypoints, [(0, 1)], flip=True, rotation=30, scale=(0.8, 1.3), translate=0.05,
                               generator=g)
    assert out.shape == x.shape and moved.shape == keypoints.shape
    found = centroids(out)                                              # channel k: the blob of keypoint k before
    swapped = (found[:, 0] - moved[:, 1, :2]).norm(dim=1) < 1.0         # keypoint 1 is now where blob 0 went
    assert 10 < int(swapped.sum()) < n - 10                             # about half flipped
    expect = torch.where(swapped[:, None, None], found[:, [1, 0, 2]], found)
    keep = moved[..., 2] > 0
    assert keep.float().mean() > 0.9
    assert ((expect - moved[..., :2]).norm(dim=-1)[keep] < 1.0).all()


def test_flipping_twice_is_the_identity_and_points_leaving_the_image_are_unlabeled():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=g)
    keypoints = torch.cat([torch.rand(3, 4, 2, generator=g) * 32, torch.ones(3, 4, 1)], -1)
    flipped = torch.tensor([True, True, False])
    m = kp.pose_matrices(32, 32, torch.zeros(3), torch.ones(3), torch.zeros(3, 2), flipped)
    once, k1 = kp.warp_poses(x, keypoints, m, flipped, [(0, 3)])
    assert once.dtype == torch.uint8 and torch.equal(once[0], x[0].flip(-1))
    assert torch.allclose(k1[0, 3, :2], torch.stack([32 - keypoints[0, 0, 0], keypoints[0, 0, 1]]))
    twice, k2 = kp.warp_poses(once, k1, m, flipped, [(0, 3)])
    assert torch.equal(twice, x) and torch.allclose(k2, keypoints, atol=1e-5)
    still = torch.tensor([False])
    shifted = kp.pose_matrices(32, 32, torch.zeros(1), torch.ones(1), torch.tensor([[10.0, 0.0]]), still)
    _, k3 = kp.warp_poses(x[:1], points([[5.0, 5.0], [25.0, 5.0]]), shifted, still, [])
    assert k3[0, :, 0].tolist() == [15.0, 35.0] and k3[0, :, 2].tolist() == [2.0, 0.0]


# ---- measures ---------------------------------------------------------------------------------------------

def test_pck_per_part_over_labeled_keypoints_normalised_by_the_figure_size():
    truth = torch.tensor([[[10.0, 10, 2], [20, 10, 2], [30, 10, 1], [40, 10, 0]],
                          [[10.0, 10, 2], [20, 10, 2], [30, 10, 0], [40, 10, 0]]])
    boxes = torch.tensor([[0.0, 0, 100, 40], [0, 0, 20, 50]])           # sizes 100 and 50
    pred = truth[..., :2].clone()
    pred[0, 0, 0] += 4       # 0.04 of 100: right at both
    pred[0, 1, 1] += 8       # 0.08: right at 0.1 only
    pred[0, 2, 0] += 20      # wrong (occluded, still measured)
    pred[0, 3, 0] += 50      # unlabeled: not measured
    pred[1, 0, 0] += 2.5     # 0.05 of 50: right at both (<=)
    pred[1, 1, 1] += 5.5     # 0.11: wrong
    parts = {"left": [0, 1], "right": [2, 3]}
    out = kp.pck(pred, truth, boxes, parts)
    assert out["all"] == {0.05: 2 / 5, 0.1: 3 / 5}
    assert out["left"] == {0.05: 2 / 4, 0.1: 3 / 4}
    assert out["right"] == {0.05: 0.0, 0.1: 0.0}
    empty = kp.pck(pred, truth, boxes, {"tail": [3]}, thresholds=(0.2,))
    assert math.isnan(empty["tail"][0.2])
    with pytest.raises(DplError):
        kp.pck(pred, truth, boxes, {"all": [0]})
    assert torch.equal(kp.keypoint_boxes(truth), torch.tensor([[10.0, 10, 30, 10], [10, 10, 20, 10]]))


def coco_ap_by_hand(oks_values, scores, thresholds=np.linspace(0.5, 0.95, 10)) -> float:
    """COCO's AP of one prediction per figure: for each OKS threshold, precision at the 101 recall points (the
    best precision at that recall or beyond; 0 past the last recall reached), averaged; then over thresholds."""
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    o = np.asarray(oks_values)[order]
    aps = []
    for t in thresholds:
        tp = np.cumsum(o >= t)
        recall, precision = tp / len(o), tp / np.arange(1, len(o) + 1)
        best = np.maximum.accumulate(precision[::-1])[::-1]
        aps.append(np.mean([best[np.argmax(recall >= r)] if (recall >= r).any() else 0.0
                            for r in np.linspace(0, 1, 101)]))
    return float(np.mean(aps))


def test_oks_ap_by_pycocotools_matches_the_hand_computation():
    sigmas = [0.05, 0.08, 0.1]
    wanted = [0.97, 0.62, 0.81, 0.43, 0.91]              # the OKS of each image's prediction
    scores = [0.9, 0.8, 0.7, 0.6, 0.3]
    truth = torch.tensor([[20.0, 20, 2], [40, 25, 1], [30, 50, 2]]).repeat(5, 1, 1)
    truth[2, 1, 2] = 0                                     # image 2: keypoint 1 unlabeled, not in its OKS
    boxes = torch.tensor([10.0, 10, 60, 70]).repeat(5, 1)  # area 3000
    area = 3000.0
    pred = truth[..., :2].clone()
    for i, o in enumerate(wanted):
        d = np.sqrt(-2 * area * (2 * np.array(sigmas)) ** 2 * np.log(o))     # each keypoint's OKS term is o
        angle = 0.7 * i
        pred[i] += torch.tensor(d, dtype=torch.float32)[:, None] * torch.tensor([math.cos(angle), math.sin(angle)])
    pred[2, 1] += 30                                       # moving an unlabeled keypoint changes nothing
    measured = [kp.oks(pred[i].numpy(), truth[i].numpy(), area, sigmas) for i in range(5)]
    assert measured == pytest.approx(wanted, abs=1e-5)
    confidence = torch.tensor(scores)[:, None].repeat(1, 3)
    ap = kp.oks_ap(pred, confidence, truth, boxes, sigmas)
    assert ap["ap"] == pytest.approx(coco_ap_by_hand(wanted, scores), abs=1e-6)
    assert ap["ap50"] == pytest.approx(coco_ap_by_hand(wanted, scores, [0.5]), abs=1e-6)
    assert ap["ap75"] == pytest.approx(coco_ap_by_hand(wanted, scores, [0.75]), abs=1e-6)
    # by hand at .75: ranked 0.97 (hit), 0.62 (miss), 0.81 (hit), 0.43 (miss), 0.91 (hit); precision 1 up to
    # recall 0.2, then the best precision at that recall or beyond: 2/3 up to 0.4, 3/5 up to 0.6, none past it
    assert ap["ap75"] == pytest.approx((21 * 1 + 20 * 2 / 3 + 20 * 3 / 5) / 101, abs=1e-6)
    unlabeled = truth.clone()
    unlabeled[4, :, 2] = 0                                 # an image without a labeled keypoint is left out
    assert kp.oks_ap(pred, confidence, unlabeled, boxes, sigmas)["ap"] == pytest.approx(
        coco_ap_by_hand(wanted[:4], scores[:4]), abs=1e-6)


# ---- together ---------------------------------------------------------------------------------------------

def dots(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """32 px images, each black but for one bright pixel, and that pixel's centre as the one keypoint."""
    ij = torch.randint(2, 30, (n, 2), generator=g)
    x = torch.zeros(n, 1, 32, 32)
    x[torch.arange(n), 0, ij[:, 1], ij[:, 0]] = 4.0
    return x, torch.cat([ij.float() + 0.5, torch.full((n, 1), 2.0)], 1)[:, None]


def test_a_tiny_net_learns_to_find_a_bright_dot():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = kp.build_keypoint_model("cnn-s", 1, 1, 32, head_width=32)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(120):
        x, keypoints = dots(32, g)
        targets, weights = kp.gaussian_targets(keypoints, net.heatmap_size, net.heatmap_stride, sigma=1.5)
        loss = kp.heatmap_loss(net(x), targets, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, keypoints = dots(128, g)                             # new images
    coords, conf = kp.predict(net, x)
    error = (coords - keypoints[..., :2]).norm(dim=-1)
    assert error.mean() < 1.5 and conf.mean() > 0.5
