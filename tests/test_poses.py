"""Poses: synthetic articulated figures with keypoints (deterministic from the seed, keypoints on the drawn figure
to sub-pixel precision, visibility 0 exactly outside the canvas, occlusion by limbs and distractors, flips that
mirror the drawing and swap left and right, small hands and faces, the keypoint sets, refusals of specs that cannot
be built or held)."""

from dataclasses import replace

import pytest
import torch

from dpl.core import DplError
from dpl.core.data import poses
from dpl.core.data.poses import (FLIP_PAIRS, NAMES, PARTS, SIGMAS, SKELETON, PoseSpec, build_poses, flip_keypoints,
                                 is_pose_spec, load_poses, parse_pose_spec, pose_spec_of)

SPEC = PoseSpec(canvas=64, count=120, test_count=40, seed=5)
W = SPEC.canvas


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def figures():
    return build_poses(SPEC, "train")


def indices(*names):
    return [NAMES.index(n) for n in names]


def pixel_values(mask: torch.Tensor, keypoints: torch.Tensor, spread: int = 0) -> torch.Tensor:
    """The largest mask value within `spread` pixels of the pixel holding each keypoint (N, k) (pixel i covers
    [i, i + 1)); -1 for keypoints outside the canvas."""
    xy = keypoints[..., :2].floor().long()
    out = torch.full(keypoints.shape[:2], -1)
    for n, k in zip(*torch.nonzero(((xy >= 0) & (xy < W)).all(-1), as_tuple=True)):
        x, y = xy[n, k].tolist()
        out[n, k] = int(mask[n, max(y - spread, 0): y + spread + 1, max(x - spread, 0): x + spread + 1].max())
    return out


def head_offsets(data) -> torch.Tensor:
    """|x of the head keypoint - the coverage-weighted centre of the figure along the row holding it|, over the
    figures where that row shows nothing else of the figure within 6 px of the head: with pixel i covering
    [i, i + 1), the head disc is symmetric about its keypoint."""
    offsets = []
    for mask, (x, y, v) in zip(data.masks, data.keypoints[:, NAMES.index("head")].tolist()):
        lo, hi = int(x) - 6, int(x) + 7
        if v == 0 or lo < 0 or hi > W:
            continue
        profile = mask[int(y), lo:hi].double()
        if profile[0] or profile[-1]:
            continue
        offsets.append(abs(float((profile * (torch.arange(lo, hi) + .5)).sum() / profile.sum()) - x))
    return torch.tensor(offsets)


def test_poses_are_deterministic_from_the_seed_and_each_split_has_its_own(figures):
    again = build_poses(SPEC, "train")
    assert figures.images.shape == (120, 1, W, W) and figures.images.dtype == torch.uint8
    assert figures.keypoints.shape == (120, len(NAMES), 3) and figures.keypoints.dtype == torch.float32
    assert figures.boxes.shape == (120, 4) and figures.masks.shape == (120, W, W)
    for a, b in ((figures.images, again.images), (figures.keypoints, again.keypoints), (figures.boxes, again.boxes),
                 (figures.masks, again.masks)):
        assert torch.equal(a, b)
    assert figures.record["fingerprint"] == again.record["fingerprint"] and figures.spec == "poses:train"
    other = build_poses(replace(SPEC, seed=6), "train")
    assert not torch.equal(other.images, figures.images) and not torch.equal(other.keypoints, figures.keypoints)
    assert other.record["fingerprint"] != figures.record["fingerprint"]
    test = build_poses(SPEC, "test")
    assert len(test) == 40 and test.record["split"] == "test" and test.spec == "poses:test"
    assert not torch.equal(test.keypoints, figures.keypoints[:40])
    assert pose_spec_of(figures.record) == SPEC and pose_spec_of({"spec": "digits:train"}) is None
    # one pose per image, each its own: no two figures share their keypoints
    assert len({tuple(k.flatten().tolist()) for k in figures.keypoints}) == 120


def test_a_source_textures_the_figures_from_its_own_split():
    spec = replace(SPEC, count=16, test_count=12)
    digits = load_poses("poses:digits:test", "train", spec)
    assert len(digits) == 12 and digits.spec == "poses:digits:test" and digits.record["source"]["spec"] == "digits:test"
    assert digits.shape == (1, W, W) and pose_spec_of(digits.record) == replace(spec, source="digits")
    assert len(load_poses("poses:digits", "train", spec)) == 16


def test_keypoints_lie_on_the_drawn_figure(figures):
    masks, kp = figures.masks, figures.keypoints
    on = lambda idx, spread=0: pixel_values(masks, kp[:, idx], spread)       # noqa: E731
    inside = lambda idx: kp[:, idx, 2] > 0                                   # noqa: E731
    # body joints lie inside capsules at least a pixel thick, face points on the head disc
    assert (on(PARTS["body"])[inside(PARTS["body"])] >= 128).all()
    assert (on(PARTS["face"])[inside(PARTS["face"])] >= 96).all()
    # fingers are faint lines less than a pixel wide: the palm or finger shows next to each point
    assert (on(PARTS["hands"], 1)[inside(PARTS["hands"])] >= 40).all()
    # the figure is drawn in the image: its covered pixels differ from the canvas around its box
    assert figures.images.float().std() > 20
    # to sub-pixel precision (pixel i covers [i, i + 1)): a coordinate convention off by half a pixel fails here
    offsets = head_offsets(figures)
    assert len(offsets) >= 40 and offsets.median() < .12, offsets
    # boxes: within the canvas, around every keypoint in it, tight on the figure's pixels
    boxes = figures.boxes
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= W).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    seen = kp[..., 2] > 0
    x, y = kp[..., 0], kp[..., 1]
    within = (x >= boxes[:, None, 0] - 1) & (x <= boxes[:, None, 2] + 1) & (y >= boxes[:, None, 1] - 1) & \
        (y <= boxes[:, None, 3] + 1)
    assert within[seen].all()
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
        lit = mask >= 51
        assert not lit[:, :x1].any() and not lit[:, x2:].any() and not lit[:y1].any() and not lit[y2:].any()
        assert lit[:, x1].any() and lit[:, x2 - 1].any() and lit[y1].any() and lit[y2 - 1].any()


def test_truncated_figures_have_visibility_0_exactly_outside_the_canvas():
    cut = build_poses(replace(SPEC, truncation=1., count=60), "train")
    xy, v = cut.keypoints[..., :2], cut.keypoints[..., 2]
    outside = ((xy < 0) | (xy >= W)).any(-1)
    assert torch.equal(v == 0, outside)
    assert outside.any(1).float().mean() > .6 and cut.record["truncated"] == 60
    share = outside.float().mean(1)
    assert share.median() < .4 and (share < 1).all()          # cut, not gone: most figures keep most keypoints
    assert (cut.boxes[:, :2] >= 0).all() and (cut.boxes[:, 2:] <= W).all()
    whole = build_poses(replace(SPEC, truncation=0., count=60), "train")
    assert (whole.keypoints[..., 2] > 0).all() and whole.record["truncated"] == 0
    xy = whole.keypoints[..., :2]
    assert (xy >= 0).all() and (xy < W).all()


def test_limbs_and_distractors_drawn_in_front_occlude_keypoints():
    bare = build_poses(replace(SPEC, clutter=0), "train")
    v = bare.keypoints[..., 2]
    assert 0 < (v == 1).float().mean() < .2
    assert (v[:, PARTS["body"]] == 1).any() and (v[:, PARTS["hands"]] == 1).any()
    # a part never hides its own keypoints: the torso's joints and the face show but where an arm crosses them
    for idx in (indices("neck", "pelvis", "left_hip", "right_hip"), PARTS["face"]):
        assert (v[:, idx] == 2).float().mean() > .8
    # an occluded keypoint is still on the figure (the figure's own mask covers it, whatever hides it)
    hidden = (v == 1) & (torch.arange(len(NAMES)) < 15)
    assert (pixel_values(bare.masks, bare.keypoints)[hidden] >= 128).all()
    busy = build_poses(replace(SPEC, clutter=16, source="digits"), "train")
    assert (busy.keypoints[..., 2] == 1).float().mean() > (v == 1).float().mean() + .02


def test_flipping_mirrors_the_drawing_and_swaps_left_and_right(figures):
    for i, j in FLIP_PAIRS:
        assert NAMES[i].startswith("left_") and NAMES[j] == "right_" + NAMES[i][len("left_"):]
    assert len(FLIP_PAIRS) * 2 == sum(n.startswith(("left_", "right_")) for n in NAMES)
    assert {NAMES[i] for pair in FLIP_PAIRS for i in pair} >= {"left_wrist", "right_thumb_tip", "left_eye",
                                                                "right_mouth", "left_palm"}
    flipped = figures.flipped()
    assert torch.equal(flipped.images, figures.images.flip(-1)) and torch.equal(flipped.masks, figures.masks.flip(-1))
    (lw, rw), (ln, rn) = indices("left_wrist", "right_wrist"), indices("nose", "nose")
    assert torch.allclose(flipped.keypoints[:, lw, 0], W - figures.keypoints[:, rw, 0])
    assert torch.equal(flipped.keypoints[:, lw, 1:], figures.keypoints[:, rw, 1:])
    assert torch.allclose(flipped.keypoints[:, ln, 0], W - figures.keypoints[:, rn, 0])
    assert torch.allclose(flipped.boxes[:, [0, 2]], W - figures.boxes[:, [2, 0]])
    assert torch.allclose(flip_keypoints(flipped.keypoints, W, FLIP_PAIRS), figures.keypoints, atol=1e-5)
    assert flipped.record["fingerprint"] != figures.record["fingerprint"] and flipped.record["flipped"]
    # each keypoint lands on the mirrored drawing, to sub-pixel precision
    assert torch.equal(pixel_values(flipped.masks, flipped.keypoints)[:, indices(*(NAMES[j] for _, j in FLIP_PAIRS))],
                       pixel_values(figures.masks, figures.keypoints)[:, [i for i, _ in FLIP_PAIRS]])
    assert head_offsets(flipped).median() < .12
    # upright figures face the camera: their left shoulder is on the image's right, flipped or not
    upright = build_poses(replace(SPEC, rotation=0, count=30), "train")
    ls, rs = indices("left_shoulder", "right_shoulder")
    for data in (upright, upright.flipped()):
        assert (data.keypoints[:, ls, 0] > data.keypoints[:, rs, 0]).all()


def test_hands_and_faces_are_small_but_their_points_a_pixel_apart(figures):
    kp = figures.keypoints
    figure = (figures.boxes[:, 2:] - figures.boxes[:, :2]).amax(1)
    groups = [indices("left_wrist") + [i for i in PARTS["hands"] if NAMES[i].startswith("left_")],
              indices("right_wrist") + [i for i in PARTS["hands"] if NAMES[i].startswith("right_")], PARTS["face"]]
    for idx in groups:
        side = (kp[:, idx, :2].amax(1) - kp[:, idx, :2].amin(1)).amax(1)
        assert side.median() < .15 * W and (side / figure).median() < .2
    # at the smallest --pose-scale the canvas allows, the points of a hand or the face stay a pixel apart
    lo = 1 / (W * poses.MIN_GAP)
    small = build_poses(replace(SPEC, scale=(lo + 1e-6, lo + 1e-6), count=40, truncation=0.), "train")
    for idx in groups:
        xy = small.keypoints[:, idx, :2]
        gaps = torch.cdist(xy, xy) + torch.eye(len(idx)) * 1e9
        assert gaps.min() >= 1 - 1e-4
    with pytest.raises(DplError, match="--pose-scale LO of at least"):
        replace(SPEC, scale=(lo * .97, .9))


def test_the_keypoint_sets_hold_together():
    assert len(NAMES) == len(set(NAMES)) == len(SIGMAS) == 32
    assert sorted(i for idx in PARTS.values() for i in idx) == list(range(len(NAMES)))
    assert set(PARTS) == {"body", "hands", "face"} and NAMES.index("left_wrist") in PARTS["body"]
    assert {NAMES[i] for i in PARTS["face"]} == {"left_eye", "right_eye", "nose", "left_mouth", "right_mouth"}
    assert len(PARTS["hands"]) == 12 and all(NAMES[i].endswith(("_palm", "_tip")) for i in PARTS["hands"])
    assert all(0 <= i < len(NAMES) and 0 <= j < len(NAMES) and i != j for i, j in SKELETON)
    assert {i for limb in SKELETON for i in limb} == set(range(len(NAMES)))       # every point on some limb
    coco = {"nose": .026, "left_eye": .025, "left_shoulder": .079, "right_elbow": .072, "left_wrist": .062,
            "right_hip": .107, "left_knee": .087, "right_ankle": .089}
    assert all(SIGMAS[NAMES.index(n)] == s for n, s in coco.items())
    assert all(.02 <= SIGMAS[i] <= .026 for i in PARTS["hands"] + PARTS["face"])
    figures = build_poses(replace(SPEC, count=2), "train")
    assert figures.names == NAMES and figures.parts == PARTS and figures.sigmas == SIGMAS


def test_subset_and_held_out_keep_images_and_keypoints_together(figures):
    part = figures.subset(torch.tensor([5, 2]))
    assert torch.equal(part.images[0], figures.images[5]) and torch.equal(part.keypoints[1], figures.keypoints[2])
    assert torch.equal(part.masks[1], figures.masks[2]) and torch.equal(part.boxes[0], figures.boxes[5])
    assert len(part) == 2 and part.record["n"] == 2 and part.record["fingerprint"] != figures.record["fingerprint"]
    rest, val = figures.held_out(20, seed=0)
    assert len(rest) == 100 and len(val) == 20 and rest.record["val_images"] == 20
    together = torch.cat([rest.keypoints, val.keypoints])
    assert sorted(map(tuple, together[:, 0].tolist())) == sorted(map(tuple, figures.keypoints[:, 0].tolist()))
    assert figures.held_out(None, 0) == (figures, None)
    with pytest.raises(DplError, match="--val"):
        figures.held_out(120, 0)


@pytest.mark.parametrize("changes, words", [
    ({"canvas": 0}, ["--canvas must be between"]),
    ({"canvas": 24}, ["--canvas 24", "under 1 px", "--canvas of at least"]),
    ({"count": 0}, ["--poses"]),
    ({"test_count": 0}, ["--test-poses"]),
    ({"scale": (.9, .5)}, ["--pose-scale"]),
    ({"scale": (0, .5)}, ["--pose-scale"]),
    ({"scale": (.5, 1.5)}, ["--pose-scale"]),
    ({"rotation": -1}, ["--pose-rotation"]),
    ({"rotation": 200}, ["--pose-rotation"]),
    ({"clutter": -1}, ["--clutter"]),
    ({"clutter": 100}, ["--clutter"]),
    ({"truncation": 1.5}, ["--truncation"]),
    ({"seed": -1}, ["--pose-seed"]),
    ({"canvas": 64.5}, ["--canvas must be an integer"]),
    ({"count": True}, ["--poses must be an integer"]),
    ({"scale": (.5, .6, .7)}, ["--pose-scale"]),
    ({"source": "nope"}, ["unknown dataset 'nope'"]),
    ({"source": "digits+fashion-mnist"}, ["single source"]),
    ({"source": "digits:test"}, ["single source"]),
])
def test_pose_specs_that_cannot_be_built_are_refused(changes, words):
    with pytest.raises(DplError) as e:
        replace(SPEC, **changes)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_a_count_that_cannot_fit_in_memory_is_refused_before_anything_is_made():
    with pytest.raises(DplError, match="--poses 1,000,000,000,000: .* more than memory allows"):
        build_poses(replace(SPEC, count=10 ** 12), "train")
    with pytest.raises(DplError, match="--test-poses 1,000,000,000,000"):
        build_poses(replace(SPEC, test_count=10 ** 12), "test")
    with pytest.raises(DplError, match="train or test"):
        build_poses(SPEC, "val")


def test_pose_specs_parse_and_bad_ones_are_refused():
    assert parse_pose_spec("poses") == (None, None) and parse_pose_spec("poses:test") == (None, "test")
    assert parse_pose_spec("poses:digits") == ("digits", None)
    assert parse_pose_spec("poses:fashion-mnist:train") == ("fashion-mnist", "train")
    assert is_pose_spec("poses") and is_pose_spec("poses:digits:test")
    assert not is_pose_spec("digits") and not is_pose_spec("scenes:digits") and not is_pose_spec("posesx")
    for bad, words in [("poses:", "not a poses spec"), ("poses::test", "not a poses spec"),
                       ("poses:a:b:c", "not a poses spec"), ("scenes:digits", "not a poses spec"),
                       ("poses:digits:val", "train or test"), ("poses:unlabeled", "train or test"),
                       ("poses:nope", "unknown dataset"), ("poses:digits+mnist", "single source")]:
        with pytest.raises(DplError, match=words):
            parse_pose_spec(bad)
