"""dpl wsddn: the fixed proposal grid, the two streams' arithmetic, the read-out on a planted case, WSDDN end to
end for one epoch through the CLI (train, eval with its baselines, label pseudo-boxes that round-trip), and the
refusals: a WSDDN model where a classifier is expected and the reverse, scene specs that cannot fit."""

import json

import pytest
import torch
from torchvision.ops import box_iou

from conftest import assert_refused, dpl
from dpl.core import artifacts
from dpl.core.methods import wsddn
from dpl.core.data.boxes import read_box_labels

TINY = ["--data", "scenes:digits", "--canvas", "32", "--object-size", "8,14", "--scenes", "24", "--test-scenes", "12",
        "--arch", "cnn-s", "--hidden", "32", "--refine", "1", "--spatial", "1", "--epochs", "1", "--batch-size", "8", "--device", "cpu"]


def test_proposals_are_a_fixed_grid_inside_the_image():
    p = wsddn.grid_proposals(64, (0.25, 0.5), (0.5, 1.0, 2.0), 0.125)
    assert torch.equal(p, wsddn.grid_proposals(64, (0.25, 0.5), (0.5, 1.0, 2.0), 0.125))
    assert (p[:, :2] >= 0).all() and (p[:, 2:] <= 64 + 1e-4).all() and (p[:, 2:] > p[:, :2]).all()
    sides = p[:, 2:] - p[:, :2]
    assert (sides[:, 0] * sides[:, 1]).round().unique().tolist() == [256.0, 1024.0]
    assert len(torch.unique(p, dim=0)) == len(p)
    # squares of 16 at every 8 px, with the last flush with the edge: 7 x 7 of them
    squares = p[(sides[:, 0] == 16) & (sides[:, 1] == 16)]
    assert len(squares) == 49 and squares[:, 2].max() == 64


def test_pooling_by_the_fixed_matrix_is_torchvisions_roi_align():
    from torchvision.ops import roi_align

    torch.manual_seed(0)
    proposals = wsddn.grid_proposals(32, (0.3, 0.6), (0.5, 1.0), 0.2)
    fmap = torch.randn(2, 3, 8, 8)
    matrix = wsddn.roi_align_matrix(proposals, (8, 8), 3, 0.25)
    rois = torch.cat([torch.arange(2.0).repeat_interleave(len(proposals))[:, None], proposals.repeat(2, 1)], 1)
    expected = roi_align(fmap, rois, 3, spatial_scale=0.25, sampling_ratio=2, aligned=True)     # (2R, 3, 3, 3)
    mine = (fmap.flatten(2) @ matrix.T).view(2, 3, len(proposals), 9).transpose(1, 2).reshape(-1, 3, 3, 3)
    assert torch.allclose(mine, expected, atol=1e-5)


def test_region_scores_are_the_class_softmax_times_the_region_softmax():
    torch.manual_seed(0)
    cls, det = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    x, y, s_cls = wsddn.scores_of(cls, det)
    assert torch.allclose(s_cls.sum(2), torch.ones(2, 5))
    assert torch.allclose(x, cls.softmax(2) * det.softmax(1))
    assert torch.allclose(y, x.sum(1)) and (y > 0).all() and (y < 1).all()


def test_refinement_teaches_the_seed_class_around_the_top_region_and_background_elsewhere():
    proposals = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]])     # 0 and 1 overlap (IoU 0.82)
    overlaps = box_iou(proposals, proposals)
    previous = torch.tensor([[[0.6, 0.0], [0.1, 0.0], [0.0, 0.2]]])                  # class 0's seed: region 0
    present = torch.tensor([[1.0, 0.0]])
    right = torch.full((1, 3, 3), -9.0)
    right[0, 0, 1] = right[0, 1, 1] = right[0, 2, 0] = 9.0          # regions 0, 1 -> class 0 (index 1); 2 -> background
    wrong = right.flip(2)
    assert wsddn.refinement_loss(right, previous, present, overlaps) < 1e-6
    assert wsddn.refinement_loss(wrong, previous, present, overlaps) > 1.0
    # weighted by the seed's score: half the score, half the loss
    half = wsddn.refinement_loss(wrong, previous / 2, present, overlaps)
    assert float(half) == pytest.approx(float(wsddn.refinement_loss(wrong, previous, present, overlaps)) / 2)
    # no class present: nothing to learn
    assert float(wsddn.refinement_loss(wrong, previous, torch.zeros(1, 2), overlaps)) == 0.0


def test_the_spatial_regulariser_pulls_the_neighbours_of_the_top_region_towards_it():
    proposals = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]])     # 0 and 1 overlap (IoU 0.82)
    overlaps = box_iou(proposals, proposals)
    region = torch.tensor([[[0.8, 0.0], [0.1, 0.0], [0.0, 0.4]]])                    # class 0's top: region 0
    features = torch.tensor([[[1.0, 1.0], [1.0, 3.0], [9.0, 9.0]]])
    present = torch.tensor([[1.0, 0.0]])
    # neighbours of region 0: itself (distance 0) and region 1 (squared distance 4 over 2 dimensions); region 2 is
    # not one, however far its features are
    expected = 0.5 * 0.8 ** 2 * (0 + 4 / 2) / 2
    assert float(wsddn.spatial_regulariser(features, region, present, overlaps)) == pytest.approx(expected)
    assert float(wsddn.spatial_regulariser(features, region, torch.zeros(1, 2), overlaps)) == 0.0
    same = features.clone()
    same[0, 1] = same[0, 0]
    assert float(wsddn.spatial_regulariser(same, region, present, overlaps)) == pytest.approx(0.0, abs=1e-6)


def test_top_boxes_and_detections_on_a_planted_case():
    proposals = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]])
    scores = torch.zeros(2, 3, 2)
    scores[0, 2, 0], scores[0, 0, 1] = 0.9, 0.6          # image 0: class 0 at proposal 2, class 1 at proposal 0
    scores[1, 1, 1], scores[1, 0, 1] = 0.8, 0.7          # image 1: class 1 at proposals 1 then 0 (overlapping)
    present = torch.tensor([[True, False], [False, True]])
    top = wsddn.top_boxes(scores, proposals, classes=present, box_scores=torch.tensor([[0.95, 0.1], [0.2, 0.85]]))
    assert top.offsets.tolist() == [0, 1, 2] and top.labels.tolist() == [0, 1]
    assert top.boxes.tolist() == [[20, 20, 30, 30], [5, 5, 15, 15]] and top.scores.tolist() == pytest.approx([0.95, 0.85])
    d = wsddn.detections(scores, proposals, per_class=2, nms_iou=0.1)
    second = d.of(1)
    kept = second["boxes"][second["labels"] == 1].tolist()
    assert kept[0] == [5, 5, 15, 15] and [0, 0, 10, 10] not in kept         # suppressed by the better overlapping one
    whole = wsddn.whole_image(torch.tensor([[0.3, 0.7]]), (32, 40))
    assert whole.boxes.tolist() == [[0, 0, 40, 32]] * 2 and whole.scores.tolist() == pytest.approx([0.3, 0.7])


def test_box_voting_moves_the_top_box_towards_its_scored_neighbours():
    proposals = torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [20, 20, 30, 30]])     # 0 and 1: IoU 0.67
    scores = torch.zeros(1, 3, 1)
    scores[0, :, 0] = torch.tensor([0.6, 0.2, 0.5])
    assert wsddn.top_boxes(scores, proposals).boxes.tolist() == [[0, 0, 10, 10]]             # no vote
    assert wsddn.top_boxes(scores, proposals, vote=1.0).boxes.tolist() == [[0, 0, 10, 10]]
    voted = wsddn.top_boxes(scores, proposals, vote=0.5)
    assert voted.boxes.tolist() == [pytest.approx([0.5, 0, 10.5, 10])] and voted.scores.tolist() == pytest.approx([0.6])
    # at vote 0 every proposal votes, the far one too; the detections are voted alike
    assert wsddn.top_boxes(scores, proposals, vote=0.0).boxes[0].tolist() == pytest.approx(
        ((0.6 * proposals[0] + 0.2 * proposals[1] + 0.5 * proposals[2]) / 1.3).tolist())
    d = wsddn.detections(scores, proposals, per_class=1, nms_iou=0.5, vote=0.5)
    assert d.boxes.tolist() == [pytest.approx([0.5, 0, 10.5, 10])]


@pytest.mark.parametrize("arch", ["cnn-s", "resnet20", "fitnet-thin", "resnet18", "mobilenet_v2", "efficientnet_b0"])
def test_the_default_feature_layer_is_fine_enough_for_the_smallest_proposals(arch):
    from dpl.core import models

    opts = wsddn.WsddnOptions()       # smallest proposal 0.25 of the side, roi 4: stride 4 at most
    for side in (64, 128):
        net = models.REGISTRY[arch](num_classes=10, in_channels=1, image_size=side, dropout=0.0, stochastic_depth=0.0)
        layer = wsddn.default_feature_layer(net, (1, side, side), opts)
        blocks = models.block_layers(net, (1, side, side))
        paths = [b["path"] for b in blocks]
        stride = side / blocks[paths.index(layer)]["shape"][-1]
        assert stride <= side / 16, (arch, side, layer)
        # the deepest such block: the next one, if any, is coarser
        assert layer == paths[-1] or side / blocks[paths.index(layer) + 1]["shape"][-1] > side / 16, (arch, side)
    assert wsddn.default_feature_layer(models.REGISTRY["cnn-s"](num_classes=10, in_channels=1, image_size=64,
                                                                dropout=0.0, stochastic_depth=0.0),
                                       (1, 64, 64), opts) == "stages.1.0"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("wsddn") / "w.safetensors"
    r = dpl("wsddn", *TINY, "-o", out)
    assert r.code == 0, r
    return out


def test_wsddn_trains_one_epoch_and_records_its_task(trained):
    meta = artifacts.read_header(trained, kind="checkpoint").meta
    assert meta["task"] == "wsddn" and meta["classes"] == [str(c) for c in range(10)]
    assert meta["data"]["scenes"]["canvas"] == 32 and meta["data"]["spec"] == "scenes:digits:train"
    assert meta["wsddn"]["proposals"] > 10 and meta["wsddn"]["feature_layer"] == "stages.0.0"     # stride 2: 8 px proposals / roi 4
    for key in ("corloc", "whole_image_corloc", "objectness_corloc", "two_stream_corloc", "map50", "map",
                "objectness_map50", "two_stream_map50"):
        assert 0 <= meta["metrics"][key] <= 1, key
    assert meta["wsddn"]["refine"] == 1 and "refine1" in meta["history"][0]
    assert meta["wsddn"]["spatial"] == 1 and meta["history"][0]["spatial"] >= 0
    assert meta["wsddn"]["vote"] == 0.2 and 0 <= meta["metrics"]["proposal_corloc"] <= 1      # voted, and not
    assert len(meta["history"]) == 1


def test_eval_reports_corloc_and_map_beside_both_baselines(trained):
    r = dpl("eval", trained, "--json", "--device", "cpu")
    assert r.code == 0, r
    found = json.loads(r.stdout)
    assert found["corloc_spec"] == "scenes:digits:train" and found["corloc_images"] == 24
    assert found["map_spec"] == "scenes:digits:test" and found["map_images"] == 12
    meta = artifacts.read_header(trained, kind="checkpoint").meta
    for key in ("corloc", "whole_image_corloc", "objectness_corloc", "map50", "whole_image_map50", "objectness_map",):
        assert found[key] == pytest.approx(meta["metrics"][key]), key       # the scenes rebuilt from the record
    table = dpl("eval", trained, "--device", "cpu")
    assert table.code == 0 and "whole image" in table.stderr and "objectness" in table.stderr, table


def test_label_writes_pseudo_boxes_that_round_trip(trained, tmp_path):
    out = tmp_path / "boxes"
    r = dpl("label", trained, "--present", "0.05", "--shard-size", "10", "-o", out, "--device", "cpu")
    assert r.code == 0, r
    assert "precision" in r.stderr
    labels = read_box_labels(out)
    assert len(labels) == 24 and labels.index.tolist() == list(range(24)) and len(list(out.iterdir())) == 3
    meta = labels.meta
    assert meta["task"] == "wsddn" and meta["image_size"] == [32, 32] and meta["teachers"][0]["path"] == str(trained)
    assert [row["threshold"] for row in meta["box_quality"]] == [0.05, 0.3, 0.5, 0.7, 0.9]
    b = labels.boxes
    assert (b.scores >= 0.05).all() and (b.boxes[:, :2] >= 0).all() and (b.boxes[:, 2:] <= 32 + 1e-4).all()
    for i in range(len(b)):                                  # at most one box per class of an image
        assert len(b.of(i)["labels"].unique()) == len(b.of(i)["labels"])
    assert_refused(dpl("label", trained, "-o", out, "--device", "cpu"), "--force")
    assert dpl("label", trained, "-o", out, "--force", "--device", "cpu").code == 0


def test_eval_of_a_box_label_folder_measures_it_against_the_truth_rebuilt_from_its_metadata(trained, tmp_path):
    out = tmp_path / "boxes"
    assert dpl("label", trained, "--present", "0.05", "-o", out, "--device", "cpu").code == 0
    r = dpl("eval", out, "--json")
    assert r.code == 0, r
    found = json.loads(r.stdout)
    labels = read_box_labels(out)
    assert found["data"] == "scenes:digits:train" and found["images"] == 24 and found["boxes"] == len(labels.boxes.labels)
    assert found["precision_recall"] == labels.meta["box_quality"]          # what dpl label reported
    assert 0 <= found["corloc"] <= 1 and 0 <= found["map"] <= found["map50"] <= 1
    table = dpl("eval", out)
    assert table.code == 0 and "precision" in table.stderr and "CorLoc" in table.stderr, table
    assert_refused(dpl("eval", out, "--data", "scenes:digits"), "--data", "cannot apply")
    assert_refused(dpl("eval", out, "--allow-partial"), "--allow-partial")
    # a folder whose images are not those its metadata rebuilds
    from dpl.core.data.boxes import write_box_shard

    other = tmp_path / "other"
    meta = {**labels.meta, "data": {**labels.meta["data"], "fingerprint": "0" * 64}}
    other.mkdir()
    write_box_shard(other, meta, 0, 0, 1, labels.index, labels.boxes)
    assert_refused(dpl("eval", other), "data has changed")


def test_a_wsddn_model_where_a_classifier_is_expected_and_the_reverse(trained, teacher, tmp_path):
    out = tmp_path / "s.safetensors"
    assert_refused(dpl("distill", "--teacher", trained, "--arch", "cnn-s", "--epochs", "1", "-o", out), "wsddn")
    assert_refused(dpl("teach", "--init", trained, "--epochs", "1", "-o", out), "wsddn")
    assert_refused(dpl("eval", trained, teacher, "--device", "cpu"), str(teacher), "not a WSDDN model")
    assert_refused(dpl("eval", trained, "--knn", "5"), "--knn")
    assert_refused(dpl("label", trained, "--tau", "2", "-o", tmp_path / "l"), "--tau")
    assert_refused(dpl("label", teacher, "--present", "0.3", "-o", tmp_path / "l"), "--present")
    assert not out.exists() and not (tmp_path / "l").exists()


@pytest.mark.parametrize("args, words", [
    (["--canvas", "20", "--object-size", "8,24"], ["24 px cannot fit a canvas of 20"]),
    (["--canvas", "32", "--objects", "12,12", "--object-size", "16,16", "--max-overlap", "0"], ["cannot fit"]),
    (["--objects", "1-3"], ["--objects takes LO,HI"]),
    (["--data", "coco:/nowhere", "--canvas", "40"], ["--canvas", "cannot apply"]),
    (["--data", "digits"], ["not data with boxes"]),
    (["--proposal-sizes", "0,0.5"], ["--proposal-sizes"]),
    (["--feature-layer", "nope"], ["no layer 'nope'"]),
    (["--feature-layer", "head.fc"], ["not a feature map"]),
])
def test_bad_scene_specs_and_options_are_refused_before_anything_is_written(args, words, tmp_path):
    out = tmp_path / "w.safetensors"
    base = TINY[:2] + TINY[4:]          # without --canvas 32
    r = dpl("wsddn", *base, *args, "-o", out)
    assert_refused(r, *words)
    assert not list(tmp_path.iterdir())


def test_wsddn_on_coco_json_trains_measures_corloc_and_labels(tmp_path):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    (tmp_path / "c").mkdir()
    images, annotations = [], []
    for i in range(8):
        pixels = np.zeros((24, 32), dtype=np.uint8)
        x, y = int(rng.integers(0, 20)), int(rng.integers(0, 12))
        pixels[y:y + 10, x:x + 10] = 200 if i % 2 else 90
        Image.fromarray(pixels, "L").save(tmp_path / "c" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 32, "height": 24})
        annotations.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [x, y, 10, 10]})
    doc = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "dim"}, {"id": 2, "name": "lit"}]}
    (tmp_path / "c" / "annotations.json").write_text(json.dumps(doc))
    out = tmp_path / "w.safetensors"
    r = dpl("wsddn", "--data", f"coco:{tmp_path / 'c'}", "--resize", "32", "--arch", "cnn-s", "--hidden", "16",
            "--epochs", "1", "--batch-size", "4", "--device", "cpu", "-o", out)
    assert r.code == 0, r
    meta = artifacts.read_header(out, kind="checkpoint").meta
    assert meta["classes"] == ["dim", "lit"] and meta["data"]["spec"].startswith("coco:")
    found = json.loads(dpl("eval", out, "--json", "--device", "cpu").stdout)
    assert found["corloc_images"] == 8 and "map50" not in found            # no test split: CorLoc alone
    r = dpl("label", out, "-o", tmp_path / "boxes", "--present", "0.05", "--device", "cpu")
    assert r.code == 0, r
    assert len(read_box_labels(tmp_path / "boxes")) == 8
