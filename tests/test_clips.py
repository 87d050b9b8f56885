"""Synthetic clips: deterministic, frames made on demand, action labels that follow the trajectories, keypoints
where the figure is."""
import numpy as np
import pytest
import torch

from dpl.core import DplError
from dpl.core.data import clip_figures
from dpl.core.data.clip_figures import ACTIONS, ClipSpec
from dpl.core.data.clips import check_length, is_clip_spec, load_clips
from dpl.core.data.pose_figures import NAMES

SMALL = ClipSpec(count=20, test_count=10, frames=8, canvas=48)


@pytest.fixture(scope="module")
def clips():
    return load_clips("clips", "train", SMALL)


@pytest.fixture(scope="module")
def whole(clips):
    return clips.poses(np.arange(len(clips)), np.tile(np.arange(8), (len(clips), 1)))


def test_deterministic_and_frame_by_frame(clips, whole):
    again = load_clips("clips", "train", SMALL)
    assert torch.equal(again.labels, clips.labels)
    # any frame alone, in any batch, is the frame of the whole clip
    picked = again.frames([3, 0], [[5, 1], [7, 7]])
    assert torch.equal(picked[0], whole["frames"][3, [5, 1]])
    assert torch.equal(picked[1], whole["frames"][0, [7, 7]])
    assert torch.equal(again.clip(4), whole["frames"][4])
    test = load_clips("clips:test", "train", SMALL)
    assert len(test) == 10 and test.record["split"] == "test"
    assert not torch.equal(test.clip(0), whole["frames"][0])
    other = load_clips("clips", "train", ClipSpec(count=20, test_count=10, frames=8, canvas=48, seed=1))
    assert not torch.equal(other.clip(0), whole["frames"][0])
    assert whole["frames"].shape == (20, 8, 1, 48, 48) and whole["frames"].dtype == torch.uint8


def test_balanced_actions(clips):
    counts = torch.bincount(clips.labels, minlength=len(ACTIONS))
    assert counts.tolist() == [2] * len(ACTIONS)
    assert clips.classes == list(ACTIONS)


def _motion(keypoints: torch.Tensor, name: str) -> torch.Tensor:
    """Per clip: how far a keypoint travels relative to the neck, summed over frames (scale-free)."""
    k, neck = NAMES.index(name), NAMES.index("neck")
    rel = keypoints[:, :, k, :2] - keypoints[:, :, neck, :2]
    return (rel[:, 1:] - rel[:, :-1]).norm(dim=-1).sum(1)


def test_actions_follow_their_trajectories():
    made = ClipSpec(count=40, test_count=10, frames=16, canvas=64, jitter=0., clutter=0)
    clips = load_clips("clips", "train", made)
    kp = clips.poses(np.arange(40), np.tile(np.arange(16), (40, 1)))["keypoints"]
    action = [clips.classes[i] for i in clips.labels]
    rows = {a: [i for i, b in enumerate(action) if b == a] for a in ACTIONS}
    left, right = _motion(kp, "left_wrist"), _motion(kp, "right_wrist")
    for i in rows["wave_left"] + rows["raise_left"]:
        assert left[i] > 2 * right[i]
    for i in rows["wave_right"] + rows["raise_right"]:
        assert right[i] > 2 * left[i]
    # the figure's left arm is on the image's right: a raised left wrist is right of the neck
    for i in rows["wave_left"]:
        assert (kp[i, :, NAMES.index("left_wrist"), 0] > kp[i, :, NAMES.index("neck"), 0]).all()
    # squats move the pelvis up and down, the fast one through more cycles; arm flaps keep the ankles still
    pelvis_y = kp[:, :, NAMES.index("pelvis"), 1]
    swings = ((pelvis_y[:, 1:] - pelvis_y[:, :-1]).sign().diff(dim=1) != 0).sum(1)
    assert min(swings[i] for i in rows["squat_fast"]) > max(swings[i] for i in rows["squat_slow"])
    ankles = _motion(kp, "left_ankle") + _motion(kp, "right_ankle")
    assert max(ankles[i] for i in rows["arm_flap"]) < min(ankles[i] for i in rows["jumping_jack"])
    # a head shake moves the nose about the head, not the wrists
    nose = _motion(kp, "nose") - _motion(kp, "head")
    assert min(nose[i] for i in rows["head_shake"]) > max(nose[i] for i in rows["raise_left"])


def test_keypoints_where_the_figure_is(whole):
    kp, boxes = whole["keypoints"], whole["boxes"]
    seen = kp[..., 2] == 2
    x, y = kp[..., 0], kp[..., 1]
    inside = (x >= boxes[..., None, 0] - 1.5) & (x <= boxes[..., None, 2] + 1.5) & \
             (y >= boxes[..., None, 1] - 1.5) & (y <= boxes[..., None, 3] + 1.5)
    assert inside[seen].float().mean() > .98
    # a keypoint's pixel differs from the frame's median (the figure is drawn there) more often than chance
    frames = whole["frames"][:, :, 0].float()
    xi, yi = x.long().clamp(0, 47), y.long().clamp(0, 47)
    n, m = frames.shape[:2]
    at = frames[torch.arange(n)[:, None, None], torch.arange(m)[None, :, None], yi, xi]
    assert seen.float().mean() > .8 and at.shape == seen.shape


def test_moving_objects():
    spec = ClipSpec(count=6, test_count=4, frames=6, canvas=40)
    clips = load_clips("moving:digits", "train", spec)
    assert clips.classes == [str(i) for i in range(10)] or len(clips.classes) == 10
    a, b = clips.clip(0), load_clips("moving:digits", "train", spec).clip(0)
    assert torch.equal(a, b) and a.shape == (6, 1, 40, 40)
    assert (a[1:].float() - a[:-1].float()).abs().mean() > 0          # things move
    assert not clips.has_keypoints
    with pytest.raises(DplError, match="no keypoints"):
        clips.poses([0], [[0]])


def test_specs_and_bad_input():
    assert is_clip_spec("clips") and is_clip_spec("moving:digits:test") and is_clip_spec("clipfolder:/x")
    assert not is_clip_spec("poses")
    with pytest.raises(DplError, match="names the classification source"):
        clip_figures.build_clips(SMALL, "train", "moving")
    for bad in ("clips:a:b:c", "moving"):
        with pytest.raises(DplError, match="not a clip spec"):
            load_clips(bad, "train")
    with pytest.raises(DplError, match="--frames"):
        ClipSpec(frames=1)
    short = load_clips("clips", "train", SMALL)
    with pytest.raises(DplError, match="no clip has the 9 frames"):
        check_length(short, 9, "a window")
    same, note = check_length(short, 8, "a window")
    assert same is short and note is None


def test_the_task_table_knows_the_clip_sources():
    from dpl.core import tasks
    from dpl.core.data import clips

    assert tasks.CLIP_SOURCES == clips.CLIP_SOURCES
    assert tasks.of_data("clips:test").name == tasks.of_data("clipfolder:/x").name == tasks.VIDEO_POSE
