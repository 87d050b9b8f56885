"""core.boxes: the ragged container, detection measures on planted cases, box label folders."""

import json

import pytest
import torch

from conftest import assert_refused, dpl

from dpl.core import DplError, artifacts
from dpl.core.data.boxes import (
    Boxes, check_boxes, corloc, mean_average_precision, precision_recall, read_box_labels, write_box_shard
)

CLASSES = ["a", "b", "c"]


def truth() -> Boxes:
    return Boxes.from_dicts([
        {"boxes": torch.tensor([[0, 0, 10, 10.], [20, 20, 30, 40]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.tensor([[5, 5, 15, 15.]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ])


def scored(b: Boxes, scores, shift=0.0) -> Boxes:
    return Boxes(b.offsets, b.boxes + torch.tensor([shift, 0, shift, 0]), b.labels, torch.tensor(scores))


def test_container():
    t = truth()
    assert len(t) == 3 and t.image_labels(3).tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert t.image_of_rows().tolist() == [0, 0, 1]
    s = t.subset(torch.tensor([1, 0]))
    assert s.offsets.tolist() == [0, 1, 3] and s.labels.tolist() == [1, 0, 1]
    both = Boxes.cat([t, s])
    assert len(both) == 5 and both.offsets.tolist() == [0, 2, 3, 3, 4, 6] and both.scores is None
    assert [d["labels"].tolist() for d in t.targets()] == [[0, 1], [1], []]


def test_perfect_detector_scores_one():
    t = truth()
    m = mean_average_precision(scored(t, [0.9, 0.8, 0.7]), t, CLASSES)
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert set(m["per_class"]) == {"a", "b"}         # c has no true box: left out
    assert corloc(scored(t, [0.9, 0.8, 0.7]), t) == 1.0


def test_shifted_boxes_pass_half_but_not_strict_iou():
    t = truth()
    p = scored(t, [0.9, 0.8, 0.7], shift=3.0)        # IoU 7/13 = 0.54 for the 10-wide boxes, 0.54 for the other
    m = mean_average_precision(p, t, CLASSES)
    assert m["map50"] == pytest.approx(1.0) and m["map75"] == pytest.approx(0.0)
    assert m["map"] == pytest.approx(0.1)
    assert precision_recall(p, t, iou=0.6, thresholds=(0.0,))[0]["tp"] == 0


def test_precision_recall_greedy_by_score():
    t = truth()
    p = Boxes.from_dicts([
        # a duplicate of the class-0 box with a lower score is a false positive; a box of the wrong class too
        {"boxes": torch.tensor([[0, 0, 10, 10.], [0, 0, 10, 10], [20, 20, 30, 40]]),
         "labels": torch.tensor([0, 0, 2]), "scores": torch.tensor([0.9, 0.4, 0.8])},
        {"boxes": torch.tensor([[5, 5, 15, 15.]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.6])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)},
    ])
    rows = {r["threshold"]: r for r in precision_recall(p, t, thresholds=(0.3, 0.5, 0.85))}
    assert (rows[0.3]["tp"], rows[0.3]["fp"], rows[0.3]["fn"]) == (2, 2, 1)
    assert (rows[0.5]["tp"], rows[0.5]["fp"]) == (2, 1)
    assert rows[0.85]["precision"] == 1.0 and rows[0.85]["recall"] == pytest.approx(1 / 3)
    assert corloc(p, t) == pytest.approx(2 / 3)      # image 0 class 1 has no box of its class


def test_no_predictions_and_no_truth():
    t = truth()
    empty = Boxes.from_dicts([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                               "scores": torch.zeros(0)}] * 3)
    assert mean_average_precision(empty, t, CLASSES)["map"] == 0.0 and corloc(empty, t) == 0.0
    with pytest.raises(DplError, match="no ground-truth"):
        mean_average_precision(empty, Boxes.from_dicts([{"boxes": torch.zeros(0, 4),
                                                         "labels": torch.zeros(0, dtype=torch.int64)}] * 3), CLASSES)


@pytest.mark.parametrize("box", [[5, 5, 5, 9], [0, 0, 33, 9], [-1, 0, 4, 4], [float("nan"), 0, 4, 4]])
def test_check_boxes_refuses_bad_rows(box):
    b = Boxes.from_dicts([{"boxes": torch.tensor([[1, 1, 4, 4.], box]), "labels": torch.tensor([0, 0])}])
    with pytest.raises(DplError, match="image 0"):
        check_boxes(b, 32, 32, "x.json")
    check_boxes(truth(), 40, 32, "ok")


def meta(total: int, world: int = 1) -> dict:
    return {"teachers": [], "data": {"spec": "scenes:digits"}, "classes": CLASSES, "num_classes": 3,
            "image_size": [40, 40], "total": total, "world": world}


def test_box_folder_round_trip(tmp_path):
    p = scored(truth(), [0.9, 0.8, 0.7])
    write_box_shard(tmp_path, meta(3), 0, 0, 2, torch.tensor([2, 0]), p.subset(torch.tensor([2, 0])))
    write_box_shard(tmp_path, meta(3), 0, 1, 2, torch.tensor([1]), p.subset(torch.tensor([1])))
    got = read_box_labels(tmp_path)
    assert got.index.tolist() == [0, 1, 2] and torch.equal(got.boxes.boxes, p.boxes)
    assert torch.equal(got.boxes.offsets, p.offsets) and torch.equal(got.boxes.scores, p.scores)
    assert got.meta["classes"] == CLASSES and len(got.sha256) == 64


def test_box_folder_refuses_incomplete_and_foreign(tmp_path):
    p = scored(truth(), [0.9, 0.8, 0.7])
    write_box_shard(tmp_path, meta(3), 0, 0, 2, torch.tensor([0, 1]), p.subset(torch.tensor([0, 1])))
    with pytest.raises(DplError, match="incomplete"):
        read_box_labels(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    artifacts.save(other / artifacts.shard_name(0, 0), {"x": torch.zeros(1)}, "labels", {})
    with pytest.raises(DplError, match="expected a boxes"):
        read_box_labels(other)
    with pytest.raises(DplError, match="no such"):
        read_box_labels(tmp_path / "missing")


def test_info_reads_a_box_folder(tmp_path):
    p = scored(truth(), [0.9, 0.8, 0.7])
    write_box_shard(tmp_path, meta(3), 0, 0, 1, torch.arange(3), p)
    r = dpl("info", tmp_path, "--json")
    assert r.code == 0, r
    shown = json.loads(r.stdout)
    assert shown["dpl.kind"] == "boxes" and shown["shards"] == 1 and shown["classes"] == CLASSES
    assert dpl("info", tmp_path / artifacts.shard_name(0, 0)).code == 2


def test_a_classifier_refuses_data_with_boxes(teacher, tmp_path):
    for argv in (("label", teacher, "--data", "scenes:digits", "-o", tmp_path / "l"),
                 ("eval", teacher, "--data", "coco:" + str(tmp_path))):
        assert_refused(dpl(*argv), "data with boxes")
    assert not (tmp_path / "l").exists()
