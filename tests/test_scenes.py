"""Data with boxes: scenes built from a classification source (deterministic from the seed, boxes inside the
canvas, each object's pixels where its box says, refusals of specs that cannot fit) and COCO-style JSON (boxes
converted and scaled, each bad case skipped and said, or refused when nothing is left)."""

import json

import numpy as np
import pytest
import torch

from dpl.core import DplError, data
from dpl.core.data.scenes import SceneSpec, is_box_spec, load_boxes, scene_spec_of

SPEC = SceneSpec(source="digits", canvas=40, objects=(1, 3), scale=(8, 16), max_overlap=0.1, scenes=60,
                 test_scenes=20, seed=3)


def test_scenes_are_deterministic_from_the_seed_and_each_split_has_its_own():
    a, b = load_boxes("scenes:digits", "train", SPEC), load_boxes("scenes:digits", "train", SPEC)
    assert a.images.shape == (60, 1, 40, 40) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and torch.equal(a.truth.boxes, b.truth.boxes)
    assert torch.equal(a.truth.labels, b.truth.labels) and a.record["fingerprint"] == b.record["fingerprint"]
    other = load_boxes("scenes:digits", "train", SceneSpec(**{**SPEC.__dict__, "seed": 4}))
    assert not torch.equal(other.images, a.images)
    test = load_boxes("scenes:digits:test", "train", SPEC)
    assert len(test) == 20 and test.record["split"] == "test"
    counts = a.truth.offsets.diff()
    assert counts.min() >= 1 and counts.max() <= 3 and len(set(counts.tolist())) > 1
    assert scene_spec_of(a.record) == SPEC and scene_spec_of({"spec": "digits:train"}) is None
    assert is_box_spec("scenes:digits") and is_box_spec("coco:/x") and not is_box_spec("digits")


def test_boxes_lie_inside_the_canvas_and_the_objects_pixels_where_their_boxes_say():
    s = load_boxes("scenes:digits", "train", SPEC)
    boxes = s.truth.boxes
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 40).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    side = (boxes[:, 2:] - boxes[:, :2]).amax(1)
    assert (side <= 16).all()
    source = data.load("digits")
    for i in range(len(s)):
        truth = s.truth.of(i)
        inside = torch.zeros(40, 40, dtype=torch.bool)
        for (x1, y1, x2, y2) in truth["boxes"].long().tolist():
            inside[y1:y2, x1:x2] = True
            patch = s.images[i, 0, y1:y2, x1:x2]
            # a tight box: each of its edges touches a lit pixel
            assert patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any()
        assert not s.images[i, 0][~inside].any()               # nothing lit outside the boxes
    # the class of a box is the label of the source image drawn; labels cover the source's classes
    assert set(s.truth.labels.tolist()) <= set(range(10)) and len(set(s.truth.labels.tolist())) > 5
    labels = s.image_labels()
    assert labels.shape == (60, 10) and torch.equal(labels.sum(1) > 0, torch.ones(60, dtype=torch.bool))
    assert len(source) > 0


def test_a_subset_keeps_its_images_boxes_and_labels_together():
    s = load_boxes("scenes:digits", "train", SPEC)
    part = s.subset(torch.tensor([5, 2]))
    assert torch.equal(part.images[0], s.images[5]) and torch.equal(part.truth.of(1)["boxes"], s.truth.of(2)["boxes"])
    assert len(part) == 2 and part.record["n"] == 2 and part.record["fingerprint"] != s.record["fingerprint"]


def test_resize_stretches_scenes_with_their_boxes():
    s = load_boxes("scenes:digits", "train", SPEC)
    r = load_boxes("scenes:digits", "train", SPEC, resize=20)
    assert r.images.shape[-2:] == (20, 20) and torch.allclose(r.truth.boxes, s.truth.boxes / 2)


@pytest.mark.parametrize("changes, words", [
    ({"canvas": 20, "scale": (8, 24)}, ["24 px cannot fit a canvas of 20"]),
    ({"canvas": 32, "objects": (10, 12), "scale": (16, 16), "max_overlap": 0.0}, ["12 objects", "cannot fit"]),
    ({"objects": (3, 1)}, ["--objects"]),
    ({"scale": (0, 8)}, ["--object-size"]),
    ({"max_overlap": 1.5}, ["--max-overlap"]),
    ({"scenes": 0}, ["--scenes"]),
])
def test_scene_specs_that_cannot_be_built_are_refused(changes, words):
    with pytest.raises(DplError) as e:
        SceneSpec(**{**SPEC.__dict__, **changes})
    for w in words:
        assert w in str(e.value)


def test_scene_sources_must_be_one_classification_source():
    for spec, word in (("scenes:", "needs a classification source"), ("scenes:nope", "unknown dataset"),
                       ("scenes:digits+mnist", "single source"), ("scenes:digits:val", "train or test")):
        with pytest.raises(DplError, match=word):
            load_boxes(spec, "train", SPEC)


# ---- COCO-style JSON ----------------------------------------------------------------------------------------

def _write_coco(root, images=4, size=(30, 20), annotations=None, categories=None, split=None):
    from PIL import Image

    folder = root / split if split else root
    (folder / "img").mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(0)
    entries = []
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), "L").save(folder / "img" / f"{i}.png")
        entries.append({"id": i + 1, "file_name": f"img/{i}.png", "width": w, "height": h})
    if annotations is None:
        annotations = [{"id": i + 1, "image_id": i + 1, "category_id": 7 if i % 2 else 3, "bbox": [2, 3, 10, 8]}
                       for i in range(images)]
    doc = {"images": entries, "annotations": annotations,
           "categories": categories or [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}
    (folder / "annotations.json").write_text(json.dumps(doc))
    return root


def test_coco_json_loads_with_boxes_converted_and_scaled(tmp_path):
    root = _write_coco(tmp_path / "c")
    d = load_boxes(f"coco:{root}", "train", resize=60)
    assert d.images.shape == (4, 1, 60, 60) and d.classes == ["cat", "dog"]        # ascending category id
    assert d.truth.labels.tolist() == [0, 1, 0, 1]
    # [x, y, w, h] = [2, 3, 10, 8] in 30 x 20 -> (x1, y1, x2, y2) scaled by (2, 3)
    assert d.truth.of(0)["boxes"].tolist() == [[4.0, 9.0, 24.0, 33.0]]
    assert not d.notes and d.record["skipped"] == {}
    assert torch.equal(d.image_labels(), torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]]))
    same = load_boxes(f"coco:{root / 'annotations.json'}", "train", resize=60)     # the JSON file itself
    assert torch.equal(same.images, d.images)
    default = load_boxes(f"coco:{root}", "train")
    assert default.images.shape[-1] == 30                                         # the median longer side


def test_coco_splits_are_sub_folders(tmp_path):
    root = _write_coco(tmp_path / "c", split="train")
    _write_coco(root, images=2, split="test")
    assert len(load_boxes(f"coco:{root}:test", "train", resize=16)) == 2
    assert len(load_boxes(f"coco:{root}", "test", resize=16)) == 2
    assert len(load_boxes(f"coco:{root}", "train", resize=16)) == 4


def test_coco_bad_annotations_and_images_are_skipped_and_said(tmp_path):
    ok = lambda i, **kw: {"id": i, "image_id": i, "category_id": 3, "bbox": [1, 1, 5, 5], **kw}   # noqa: E731
    annotations = [ok(1), ok(1, bbox=[28, 1, 5, 5]), ok(2, bbox=[1, 1, 0, 5]), ok(2, bbox=[float("nan"), 1, 2, 2]),
                   ok(3, category_id=99), ok(3, image_id=42), ok(5), ok(6, bbox=[0, 0, 30.5, 20])]
    root = _write_coco(tmp_path / "c", images=7, annotations=annotations)
    (root / "img" / "5.png").unlink()                        # image 6's file is gone... (ids start at 1)
    (root / "img" / "4.png").write_bytes(b"not a png")       # image 5's file cannot be decoded
    d = load_boxes(f"coco:{root}", "train", resize=30)
    assert len(d) == 1 and d.truth.of(0)["boxes"].tolist() == [[1.0, 1.5, 6.0, 9.0]]
    said = " | ".join(d.notes)
    for words in ("1 boxes outside their image", "2 boxes that are NaN, infinite or of zero area",
                  "1 annotations of unknown category ids", "1 annotations of unknown image ids",
                  "images with no annotation", "1 images whose file is missing", "1 images that cannot be decoded"):
        assert words in said, (words, said)
    assert d.record["skipped"]["images whose file is missing"]["first"] == "img/5.png"


def test_coco_with_nothing_left_or_malformed_is_refused(tmp_path):
    root = _write_coco(tmp_path / "a", annotations=[{"id": 1, "image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2]}])
    with pytest.raises(DplError, match="no image with a valid annotation"):
        load_boxes(f"coco:{root}", "train")
    bad = tmp_path / "b"
    bad.mkdir()
    (bad / "annotations.json").write_text("{not json")
    with pytest.raises(DplError, match="not valid JSON"):
        load_boxes(f"coco:{bad}", "train")
    (bad / "annotations.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DplError, match="'images' and 'categories'"):
        load_boxes(f"coco:{bad}", "train")
    twice = _write_coco(tmp_path / "t", categories=[{"id": 3, "name": "a"}, {"id": 3, "name": "b"}])
    with pytest.raises(DplError, match="category id 3 appears twice"):
        load_boxes(f"coco:{twice}", "train")
    with pytest.raises(DplError, match="no such file"):
        load_boxes(f"coco:{tmp_path / 'none'}", "train")
    with pytest.raises(DplError, match="no annotations.json"):
        load_boxes(f"coco:{tmp_path}", "train")
