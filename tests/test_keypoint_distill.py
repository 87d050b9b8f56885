"""Keypoints beyond teach: dpl label (pseudo-keypoint shards from one model or from part experts, DOPE), their quality
(dpl eval of the folder), dpl distill --labels (the confidence threshold: low-confidence keypoints get no target)
and --teacher (DWPose's first stage, and the second: --init and --head-only), --init from a backbone, the part
experts' crops, and the refusals of each."""

import json

import pytest
import torch

from conftest import assert_refused, dpl
from dpl.core import artifacts
from dpl.core.data import poses
from dpl.core.data.partition import part_of_images
from dpl.core.engine import train
from dpl.core.data.poses import NAMES, PARTS
from dpl.core.methods import keypoints
from dpl.core.methods.keypoints import crops, pseudo

POSES = ("--data", "poses", "--canvas", "40", "--pose-scale", "0.8,0.95", "--poses", "48", "--test-poses", "16")
FAST = ("--arch", "cnn-s", "--epochs", "1", "--batch-size", "16", "--lr", "0.002", "--optimizer", "adamw",
        "--device", "cpu")
TRAIN = FAST[:-2]        # distill takes the same, and --device

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A teacher on 12 labeled figures of 48, its label folder, and three part experts on the same split."""
    root = tmp_path_factory.mktemp("kp-distill")
    out = {"root": root, "teacher": root / "teacher.safetensors", "labels": root / "labels"}
    assert dpl("teach", *POSES, *FAST, "--labeled", "12", "-o", out["teacher"]).code == 0
    r = dpl("label", out["teacher"], "-o", out["labels"], "--json", "--device", "cpu")
    assert r.code == 0, r
    out["label_json"] = json.loads(r.stdout)
    for part in ("body", "hands", "face"):
        out[part] = root / f"{part}.safetensors"
        r = dpl("teach", *POSES, *FAST, "--labeled", "12", "--pose-part", part, "--part-size", "16", "-o", out[part])
        assert r.code == 0, r
    return out


def test_label_writes_pseudo_keypoints_of_the_unlabeled_part(made):
    labels = keypoints.read_labels(made["labels"])
    assert len(labels) == 36 and labels.coords.shape == (36, len(NAMES), 2)
    assert ((labels.confidence >= 0) & (labels.confidence <= 1)).all()
    meta = labels.meta
    assert meta["data"]["part"] == "unlabeled" and meta["data"]["labeled_images"] == 12 and meta["names"] == NAMES
    assert meta["teachers"][0]["path"] == str(made["teacher"])
    q = made["label_json"]["quality"]
    assert q["images"] == 36 and {"pck", "pck_body", "pck_hands", "pck_face", "ap"} <= set(q)
    assert [row["min_confidence"] for row in q["by_confidence"]] == [0.3, 0.5, 0.7]
    # dpl eval of the folder measures the same pseudo-keypoints against the rebuilt truth
    r = dpl("eval", made["labels"], "--json")
    assert r.code == 0, r
    assert json.loads(r.stdout)["pck"] == pytest.approx(q["pck"])


def test_label_shards_round_trip(tmp_path):
    meta = {"teachers": [], "data": {"spec": "poses:train"}, "names": ["a", "b"], "skeleton": [[0, 1]],
            "flip_pairs": [], "parts": {"body": [0, 1]}, "sigmas": [0.05, 0.05], "image_size": [8, 8], "total": 5,
            "world": 1}
    coords, conf = torch.rand(5, 2, 2) * 8, torch.rand(5, 2)
    pseudo.write_labels(tmp_path, meta, torch.arange(5), coords, conf, shard_size=2)
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 3 and keypoints.is_keypoint_folder(tmp_path)
    back = keypoints.read_labels(tmp_path)
    assert torch.equal(back.index, torch.arange(5)) and torch.equal(back.coords, coords)
    assert torch.allclose(back.confidence, conf)
    (tmp_path / "shard-00000-00001.safetensors").unlink()
    assert_refused(dpl("eval", tmp_path), "incomplete label folder")


def test_distill_from_labels_keeps_only_confident_keypoints(made, tmp_path):
    labels = keypoints.read_labels(made["labels"])
    pool = poses.build_poses(poses.pose_spec_of(labels.meta["data"]), "train")
    pool = part_of_images(pool, 12, 0, "unlabeled")
    threshold = float(labels.confidence.median())
    data, summary = keypoints.with_pseudo(None, pool, labels, threshold)
    kept = labels.confidence >= threshold
    assert torch.equal(data.keypoints[..., 2] > 0, kept) and summary["keypoints_kept"] == int(kept.sum())
    targets, weights = keypoints.gaussian_targets(data.keypoints, 10, 4)
    assert (weights[~kept] == 0).all() and (targets[~kept] == 0).all()    # no target: neither point nor background
    out = tmp_path / "student.safetensors"
    r = dpl("distill", "--labels", made["labels"], *TRAIN, "--min-confidence", "0", "--val", "4", "-o", out)
    assert r.code == 0 and "8 labeled images and 36 pseudo-labeled" in r.stderr, r
    meta = artifacts.read_header(out).meta
    assert meta["task"] == "keypoints" and meta["distill"]["distill"] == "pseudo-keypoints"
    assert meta["distill"]["labeled_images"] == 8 and meta["parents"][0]["role"] == "labels"
    assert 0 <= meta["metrics"]["test_pck"] <= 1


def test_distill_online_and_head_only_second_stage(made, tmp_path):
    first, second = tmp_path / "s1.safetensors", tmp_path / "s2.safetensors"
    r = dpl("distill", "--teacher", made["teacher"], *TRAIN, "--feature-loss", "hint", "--kd-decay", "-o", first)
    assert r.code == 0, r
    meta = artifacts.read_header(first).meta
    assert meta["distill"]["feature"] and meta["distill"]["decay"] and "kd" in meta["history"][0]
    full = poses.build_poses(poses.pose_spec_of(meta["data"]), "train")
    labeled = part_of_images(full, 12, 0, "labeled")                  # the teacher's split: truth there only
    assert meta["distill"]["labeled_keypoints"] == int((labeled.keypoints[..., 2] > 0).sum())
    assert meta["data"]["n"] == 48
    r = dpl("distill", "--teacher", first, "--init", first, "--head-only", "--epochs", "1", "--batch-size", "16",
            "--device", "cpu", "-o", second)
    assert r.code == 0, r
    a, b = artifacts.load_checkpoint(first, task="keypoints"), artifacts.load_checkpoint(second, task="keypoints")
    backbone = [k for k in a.tensors if k.startswith("backbone.")]
    head = [k for k in a.tensors if k.startswith("final.")]
    assert backbone and all(torch.equal(a.tensors[k], b.tensors[k]) for k in backbone)   # BN statistics too
    assert not all(torch.equal(a.tensors[k], b.tensors[k]) for k in head)
    assert artifacts.read_header(second).meta["train"]["head_only"] is True
    assert_refused(dpl("distill", "--teacher", first, "--head-only", "-o", tmp_path / "x"), "--head-only", "--init")
    assert_refused(dpl("distill", "--labels", made["labels"], "--alpha", "1", "-o", tmp_path / "x"), "--alpha")


def test_part_crops_map_back_exactly():
    images = torch.zeros(1, 1, 40, 40, dtype=torch.uint8)
    images[0, 0, 10, 20] = 255                                   # pixel (x 20, y 10), centre (20.5, 10.5)
    centre, side = torch.tensor([[20.5, 10.5]]), torch.tensor([8.0])
    out = crops.crop(images, centre, side, 16)                    # 2 crop pixels per image pixel
    assert out.shape == (1, 1, 16, 16) and out[0, 0, 7:9, 7:9].float().mean() > 100 and out[0, 0, 0, 0] == 0
    xy = torch.tensor([[[20.5, 10.5], [17.0, 14.0]]])
    inside = crops.to_crop(xy, centre, side, 16)
    assert torch.allclose(inside[0, 0], torch.tensor([8.0, 8.0])) and torch.allclose(inside[0, 1], torch.tensor([1.0, 15.0]))
    assert torch.allclose(crops.to_canvas(inside, centre, side, 16), xy)


def test_expert_composition_maps_crops_back_on_a_planted_case():
    """A body 'expert' that puts the wrists and head at known points and experts that answer the crop centre:
    the composed keypoints are those points, mapped back from the crops."""
    class Planted(torch.nn.Module):
        def __init__(self, k, at):
            super().__init__()
            self.k, self.at, self.heatmap_stride, self.num_keypoints = k, at, 1, k
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):                # a peak at `at` (x, y) in input pixels for every keypoint
            n, _, h, w = x.shape
            heat = torch.zeros(n, self.k, h, w)
            heat[..., int(self.at[1] * h), int(self.at[0] * w)] = 1.0
            return heat

    size, body_names = 40, crops.part_sets("body")["names"]
    where = {n: (10.0 + i, 12.0 + i) for i, n in enumerate(body_names)}
    where.update(neck=(20.0, 10.0), pelvis=(20.0, 20.0))           # torso 10 px: hand crops 12 px, face 7 px

    class Body(Planted):
        def forward(self, x):
            heat = torch.zeros(len(x), self.k, size, size)
            for i, n in enumerate(body_names):
                heat[:, i, int(where[n][1]), int(where[n][0])] = 1.0
            return heat

    def meta(part, names, s):
        return {"input": {"mean": [0.0], "std": [1.0], "size": s, "channels": 1},
                "keypoints": {"names": names}, "data": {"pose_part": {"part": part}}}

    hand_names, face_names = crops.part_sets("hands")["names"], crops.part_sets("face")["names"]
    experts = [(Body(15, None), meta("body", body_names, size)),
               (Planted(6, (0.25, 0.75)), meta("hands", hand_names, 16)),     # crop pixel (4.5, 12.5) of 16
               (Planted(5, (0.5, 0.5)), meta("face", face_names, 16))]
    coords, conf = keypoints.label_experts(experts, torch.zeros(2, 1, size, size, dtype=torch.uint8), list(NAMES),
                                           train.runtime("cpu"))
    assert coords.shape == (2, len(NAMES), 2) and conf.shape == (2, len(NAMES))
    at = {n: coords[0, i] for i, n in enumerate(NAMES)}
    for n in body_names:                                                # cell centres of the planted peaks
        assert torch.allclose(at[n], torch.tensor(where[n]) + 0.5, atol=0.3), n
    for side in ("left", "right"):
        wrist = torch.tensor(where[f"{side}_wrist"]) + 0.5
        expected = wrist + (torch.tensor([4.5, 12.5]) / 16 - 0.5) * 12.0
        assert torch.allclose(at[f"{side}_thumb_tip"], expected, atol=0.3), side
    head = torch.tensor(where["head"]) + 0.5
    assert torch.allclose(at["nose"], head + (torch.tensor([8.5, 8.5]) / 16 - 0.5) * 7.0, atol=0.3)


def test_dope_experts_label_whole_bodies_and_refusals(made, tmp_path):
    out = tmp_path / "dope"
    r = dpl("label", made["body"], made["hands"], made["face"], "-o", out, "--json", "--device", "cpu")
    assert r.code == 0, r
    labels = keypoints.read_labels(out)
    assert labels.meta["names"] == NAMES and len(labels) == 36
    assert [t["role"] for t in labels.meta["teachers"]] == ["body", "hands", "face"]
    hands = artifacts.read_header(made["hands"]).meta
    assert hands["data"]["n"] == 24 and hands["input"]["size"] == 16          # two hands of each labeled figure
    x = tmp_path / "x"
    assert_refused(dpl("label", made["body"], made["face"], "-o", x), "unpredicted", "left_palm")
    assert_refused(dpl("label", made["body"], made["hands"], made["face"], made["teacher"], "-o", x),
                   "head", "predicts too")
    assert_refused(dpl("label", made["hands"], made["face"], "-o", x), "unpredicted", "neck")
    assert not x.exists()


def test_teach_init_from_a_backbone_and_refusals(made, tmp_path):
    backbone = tmp_path / "backbone.safetensors"
    assert dpl("teach", "--data", "digits", "--arch", "cnn-s", "--epochs", "1", "-o", backbone).code == 0
    out = tmp_path / "kp.safetensors"
    # digits are 8x8: a backbone of other images is refused by name
    assert_refused(dpl("teach", *POSES, *FAST, "--init", backbone, "-o", out), str(backbone), "1x8x8")
    r = dpl("teach", *POSES, *FAST, "--init", made["teacher"], "-o", out)
    assert r.code == 0, r
    assert artifacts.read_header(out).meta["parents"][0]["role"] == "init"
    assert_refused(dpl("teach", *POSES, "--pose-part", "feet", "-o", tmp_path / "y"), "--pose-part", "feet")
    assert_refused(dpl("teach", "--data", "digits", "--pose-part", "hands", "-o", tmp_path / "y"), "--pose-part")
    assert not (tmp_path / "y").exists()


def test_keypoint_data_and_models_refused_by_classifier_commands(made, tmp_path):
    out = tmp_path / "x.safetensors"
    assert_refused(dpl("semi", "--data", "poses", "--labeled", "10", "-o", out), "data with keypoints")
    assert_refused(dpl("mil", "--data", "poses", "--target-class", "1", "-o", out), "data with keypoints")
    assert_refused(dpl("hint", "--teacher", made["teacher"], "-o", out), str(made["teacher"]), "data with keypoints")
    assert_refused(dpl("distill", "--teacher", made["teacher"], "--data", "digits", "-o", out), "--data")
    assert_refused(dpl("label", made["teacher"], "--data", "digits", "-o", tmp_path / "l"), "classification data")
    assert_refused(dpl("plot", "labels", made["labels"], "-o", tmp_path / "p"), "keypoints")
    assert not out.exists() and not (tmp_path / "l").exists()


def test_flip_test_in_eval_and_label(made, tmp_path):
    plain = json.loads(dpl("eval", made["teacher"], "--json", "--device", "cpu").stdout)
    r = dpl("eval", made["teacher"], "--flip-test", "--json", "--device", "cpu")
    assert r.code == 0, r
    flipped = json.loads(r.stdout)
    assert 0 <= flipped["pck"] <= 1 and flipped["n"] == plain["n"]
    assert (flipped["pck"], flipped["ap"]) != (plain["pck"], plain["ap"])     # another read-out of the same model
    r = dpl("label", made["teacher"], "--flip-test", "-o", tmp_path / "l", "--device", "cpu")
    assert r.code == 0 and keypoints.read_labels(tmp_path / "l").meta["flip_test"] is True, r
    assert_refused(dpl("eval", "--flip-test", made["root"] / "missing.safetensors"), "missing")


def test_report_skips_keypoint_artifacts(made, tmp_path):
    """The report measures classifiers and their label folders; keypoint checkpoints and label folders are passed
    over, not read as class labels."""
    assert_refused(dpl("report", made["root"], "-o", tmp_path / "r.html"), "no dpl checkpoints or label folders")
