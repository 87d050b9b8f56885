"""COCO person keypoints read top-down (core/data/coco_keypoints.py): a known person's crop, keypoints and box in
crop pixels and back to the image exactly, the keypoint set from the category, each bad annotation and image
skipped and said, refusals in one line, and OKS of perfect predictions."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dpl.core import DplError
from dpl.core.data.coco_keypoints import (
    COCO_SIGMAS, DEFAULT_SIGMA, is_coco_keypoints_spec, parse_coco_keypoints_spec, read_coco_keypoints, to_image_coords,
)
from dpl.core.methods.keypoints.measure import oks, oks_ap

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["nose", "left_eye", "right_eye", "left_hand", "right_hand"]
W, H = 40, 30
PERSON = {"id": 1, "name": "person", "keypoints": NAMES, "skeleton": [[1, 2], [1, 3], [2, 4], [3, 5]]}


def _person(aid, image_id, points=None, **kw):
    """An annotation of the person category; `points` {index: (x, y, v)}, the others (0, 0, 0)."""
    kp = [0] * (3 * len(NAMES))
    for i, p in ({1: (14, 9, 2)} if points is None else points).items():
        kp[3 * i:3 * i + 3] = p
    return {"id": aid, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": [10, 8, 16, 10],
            "keypoints": kp, "num_keypoints": sum(v > 0 for v in kp[2::3]), **kw}


def _write(root, annotations, images=3, categories=(PERSON,), colour=()):
    """`images` random W x H PNGs (grey, RGB where their index is in `colour`) and annotations.json in `root`."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        shape, mode = ((H, W, 3), "RGB") if i in colour else ((H, W), "L")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / f"{i}.png")
    doc = {"images": [{"id": i + 1, "file_name": f"{i}.png", "width": W, "height": H} for i in range(images)],
           "annotations": annotations, "categories": list(categories)}
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def _pixels(root, i):
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(root / f"{i}.png")))


def test_a_known_person_lands_where_the_crop_says_and_maps_back_exactly(tmp_path):
    points = {0: (12, 10, 2), 1: (14, 9, 1), 3: (39.5, 20, 2), 4: (20, 16, 2)}       # right_eye unlabeled
    root = _write(tmp_path / "c", [_person(1, 1, points), _person(2, 2, {0: (3, 2, 2)}, bbox=[0, 0, 8, 8])], 2)
    d = read_coco_keypoints(root, "train", size=16, margin=2.0)
    assert d.images.shape == (2, 1, 16, 16) and d.images.dtype == torch.uint8 and not d.notes
    # box (10, 8)-(26, 18): centre (18, 13), a square of side 2 x 16 = 32 from (2, -3), scale 16 / 32 = 0.5
    assert d.crops.dtype == torch.float64 and d.crops.tolist() == [[2, -3, .5, 1], [-4, -4, 1, 2]]
    assert d.keypoints[0].tolist() == [[5, 6.5, 2], [6, 6, 1], [-1, 1.5, 0], [18.75, 11.5, 0], [9, 9.5, 2]]
    assert d.boxes.tolist() == [[4, 5.5, 12, 10.5], [4, 4, 12, 12]]
    back = to_image_coords(d.keypoints[..., :2], d.crops)
    assert back[0].tolist() == [[12, 10], [14, 9], [0, 0], [39.5, 20], [20, 16]] and back[1, 0].tolist() == [3, 2]
    # scale 1: the crop is the image's window from (-4, -4), zero where it leaves the image
    window = torch.zeros(16, 16, dtype=torch.uint8)
    window[4:, 4:] = _pixels(root, 1)[:12, :12]
    assert torch.equal(d.images[1, 0], window)
    # scale 0.5: the window from (2, -3), zero above the image, shrunk by the antialiased bilinear filter (a
    # triangle twice as wide: weights 1, 3, 3, 1 / 8 over the 4 pixels about each crop pixel's centre)
    window = torch.zeros(32, 32)
    window[3:] = _pixels(root, 0)[:29, 2:34].float()
    k = torch.tensor([1.0, 3, 3, 1]) / 8
    shrunk = torch.nn.functional.conv2d(window[None, None], torch.outer(k, k)[None, None], stride=2, padding=1)[0, 0]
    assert (d.images[0, 0, 1:-1, 1:-1].float() - shrunk[1:-1, 1:-1]).abs().max() <= 1
    assert d.record["spec"] == f"coco-keypoints:{root}:train" and d.record["n"] == 2 and d.record["keypoints"] == 5
    assert d.record["image_size"] == [16, 16] and d.record["coco_keypoints"] == {"margin": 2.0, "size": 16,
                                                                                 "skipped": {}}


def test_the_keypoint_set_comes_from_the_category(tmp_path):
    root = _write(tmp_path / "c", [_person(1, 1)], categories=[{"id": 0, "name": "car"}, PERSON])
    d = read_coco_keypoints(root, "train", size=8)
    assert d.names == NAMES and d.skeleton == [(0, 1), (0, 2), (1, 3), (2, 4)]
    assert d.flip_pairs == [(1, 2), (3, 4)] and d.parts == {"body": [0, 1, 2, 3, 4]}
    assert d.sigmas == [COCO_SIGMAS["nose"], .025, .025, DEFAULT_SIGMA, DEFAULT_SIGMA]


def test_bad_annotations_and_images_are_skipped_counted_and_said(tmp_path):
    nan = _person(3, 1)
    nan["keypoints"][0] = float("nan")
    annotations = [
        _person(1, 1, {1: (40.5, 10, 2)}),                                    # kept: within a pixel of slack
        _person(2, 1, keypoints=[1, 2, 2]), nan, _person(4, 1, {1: (42, 10, 2)}), _person(5, 1, {1: (4, 4, 3)}),
        _person(6, 1, bbox=[1, 1, 0, 5]), _person(7, 42), _person(8, 1, iscrowd=1), _person(9, 1, {}),
        _person(10, 1, category_id=2), _person(11, 2), _person(12, 3)]
    root = _write(tmp_path / "c", annotations, images=4, categories=[PERSON, {"id": 2, "name": "car"}])
    (root / "1.png").unlink()                          # image 2's file is gone
    (root / "2.png").write_bytes(b"not a png")         # image 3's file cannot be decoded
    d = read_coco_keypoints(root, "train", size=8)
    assert len(d) == 1 and d.crops[0, 3] == 1                          # the one kept: its keypoint beyond the crop
    assert d.keypoints[0, 1, 2] == 0 and to_image_coords(d.keypoints[:, :, :2], d.crops)[0, 1].tolist() == [40.5, 10]
    said = " | ".join(d.notes)
    for words in ("1 annotations whose keypoints are not 15 numbers", "1 annotations with NaN or infinite keypoints",
                  "1 annotations with a labeled keypoint outside their image",
                  "1 annotations with a visibility not 0, 1 or 2", "1 boxes that are NaN, infinite or of zero area",
                  "1 annotations of unknown image ids", "1 crowd annotations (iscrowd)",
                  "1 annotations with no labeled keypoint (num_keypoints 0)",
                  "1 annotations of categories without these keypoints", "1 images whose file is missing",
                  "1 images that cannot be decoded", "1 images with no annotation"):
        assert words in said, (words, said)
    skipped = d.record["coco_keypoints"]["skipped"]
    assert skipped["images whose file is missing"] == {"count": 1, "first": "1.png"}
    assert skipped["crowd annotations (iscrowd)"]["first"] == "annotation 8 of image 1"


def test_refusals_are_one_line(tmp_path):
    cases = [(_write(tmp_path / "a", [_person(1, 1)], categories=[{"id": 1, "name": "person"}]),
              "no category lists 'keypoints'"),
             (_write(tmp_path / "b", [_person(1, 1, {})]), "no person with labeled keypoints"),
             (_write(tmp_path / "c", [_person(1, 1)], categories=[{**PERSON, "skeleton": [[0, 1]]}]),
              "'skeleton' must be a list of 1-based keypoint pairs"),
             (_write(tmp_path / "d", [_person(1, 1)], categories=[{**PERSON, "keypoints": ["a", "a"]}]),
              "'keypoints' must be a list of distinct names")]
    for root, words in cases:
        with pytest.raises(DplError, match=words) as e:
            read_coco_keypoints(root, "train")
        assert "\n" not in str(e.value) and str(root / "annotations.json") in str(e.value)
    with pytest.raises(DplError, match="crop margin"):
        read_coco_keypoints(cases[0][0], "train", margin=0)


def test_specs_splits_subsets_and_colour(tmp_path):
    assert is_coco_keypoints_spec("coco-keypoints:/x") and not is_coco_keypoints_spec("coco:/x")
    assert parse_coco_keypoints_spec("coco-keypoints:/x/y:test") == (Path("/x/y"), "test")
    path, split = parse_coco_keypoints_spec("coco-keypoints:rel")
    assert path.is_absolute() and path.name == "rel" and split is None
    root = tmp_path / "s"
    _write(root / "train", [_person(i, 1 + i % 3) for i in range(1, 7)], colour=(2,))
    _write(root / "test", [_person(1, 1)])
    assert len(read_coco_keypoints(root, "test", size=8)) == 1
    d = read_coco_keypoints(root / "train" / "annotations.json", "train", size=8)
    assert d.images.shape == (6, 3, 8, 8)                               # one colour image makes all RGB
    part = d.subset(torch.tensor([4, 1]))
    assert torch.equal(part.crops, d.crops[[4, 1]]) and part.record["fingerprint"] != d.record["fingerprint"]
    rest, val = d.held_out(2, seed=0)
    assert len(rest.crops) == 4 and len(val.crops) == 2 and d.flipped().crops is None


def test_perfect_predictions_score_oks_ap_one_and_crop_oks_is_image_oks(tmp_path):
    root = _write(tmp_path / "c", [_person(1, 1, {0: (12, 10, 2), 1: (14, 9, 2), 4: (20, 16, 1)}),
                                   _person(2, 2, {0: (30, 20, 2), 2: (33, 21, 2)}, bbox=[25, 15, 12, 10])])
    d = read_coco_keypoints(root, "train", size=32)
    ap = oks_ap(d.keypoints[..., :2], torch.ones(len(d), 5), d.keypoints, d.boxes, d.sigmas)
    assert ap == {"ap": 1.0, "ap50": 1.0, "ap75": 1.0}
    miss = d.keypoints[..., :2].double() + 1.5                          # off by 1.5 crop pixels
    truth = torch.cat([to_image_coords(d.keypoints[..., :2].double(), d.crops), d.keypoints[..., 2:].double()], -1)
    for n, image_area in enumerate([16 * 10, 12 * 10]):                 # the JSON's boxes, in image pixels
        scale = float(d.crops[n, 2])
        crop_area = float((d.boxes[n, 2:] - d.boxes[n, :2]).prod())
        assert math.isclose(crop_area, image_area * scale ** 2, rel_tol=1e-6)
        in_crop = oks(miss[n].numpy(), d.keypoints[n].numpy(), crop_area, d.sigmas)
        in_image = oks(to_image_coords(miss, d.crops)[n].numpy(), truth[n].numpy(), image_area, d.sigmas)
        assert math.isclose(in_crop, in_image, rel_tol=1e-6) and 0 < in_crop < 1


def test_coco_keypoints_through_the_cli(tmp_path):
    """teach, eval and label on coco-keypoints: (train/ and test/ splits), crops of --resize px; pose options
    refused."""
    from conftest import assert_refused, dpl

    people = [_person(i + 1, i % 3 + 1, {0: (14, 9, 2), 1: (12 + i % 3, 11, 2), 2: (20, 12, 1), 3: (22, 14, 2)})
              for i in range(6)]
    _write(tmp_path / "c" / "train", people)
    _write(tmp_path / "c" / "test", people[:3])
    spec = f"coco-keypoints:{tmp_path / 'c'}"
    out = tmp_path / "kp.safetensors"
    r = dpl("teach", "--data", spec, "--resize", "16", "--arch", "cnn-s", "--epochs", "1", "--batch-size", "4",
            "--device", "cpu", "-o", out)
    assert r.code == 0, r
    from dpl.core import artifacts

    meta = artifacts.read_header(out).meta
    assert meta["task"] == "keypoints" and meta["keypoints"]["names"] == NAMES and meta["input"]["size"] == 16
    assert meta["metrics"]["test_spec"].endswith(":test") and 0 <= meta["metrics"]["test_pck"] <= 1
    r = dpl("eval", out, "--json", "--device", "cpu")
    assert r.code == 0 and json.loads(r.stdout)["n"] == 3, r
    r = dpl("label", out, "-o", tmp_path / "labels", "--device", "cpu")
    assert r.code == 0, r
    assert_refused(dpl("eval", out, "--data", "poses"), "a model of 5 keypoints", "32 other ones")
    assert_refused(dpl("teach", "--data", spec, "--poses", "10", "-o", tmp_path / "x"), "--poses", "cannot apply")
    assert_refused(dpl("teach", "--data", "poses", "--resize", "16", "-o", tmp_path / "x"), "--resize")
