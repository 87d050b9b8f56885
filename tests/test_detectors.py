"""The detector families (core/models.py: Faster R-CNN, RetinaNet, FCOS on registry backbones) through teach, eval,
label and offline distill on small scenes of digits; ImageNet weights for a torchvision backbone; the refusals.
Faster R-CNN's own round trip and Chen et al.'s online terms are in tests/test_detect.py."""

import json
from pathlib import Path

import pytest
import torch

from conftest import assert_refused, cache_imagenet_weights, dpl
from dpl.core import artifacts, models
from dpl.core.methods import detect
from dpl.core.data import scenes
from dpl.core.data.boxes import read_box_labels
from dpl.core.methods.common import ModelOptions

SCENES = ("--data", "scenes:digits", "--canvas", "32", "--objects", "1,2", "--object-size", "10,16", "--scenes", "16",
          "--test-scenes", "8")
FAST = ("--epochs", "1", "--batch-size", "16", "--device", "cpu")
SPEC = scenes.SceneSpec(source="digits", canvas=32, objects=(1, 2), scale=(10, 16), scenes=16, test_scenes=8)
TERMS = {"retinanet": {"cls", "box"}, "fcos": {"cls", "box", "ctr"}}


@pytest.fixture(scope="module", params=["retinanet", "fcos"])
def one_stage(request, tmp_path_factory) -> tuple[str, Path]:
    """A one-stage detector (FAMILY-cnn-s) taught one epoch on 8 labeled scenes of the 16."""
    out = tmp_path_factory.mktemp(request.param) / "t.safetensors"
    r = dpl("teach", *SCENES, "--labeled", "8", "--arch", f"{request.param}-cnn-s", *FAST, "-o", out)
    assert r.code == 0, r
    return request.param, out


def test_one_stage_detector_through_teach_eval_label_and_offline_distill(one_stage, tmp_path):
    family, taught = one_stage
    meta = artifacts.read_header(taught).meta
    assert meta["arch"]["name"] == f"{family}-cnn-s" and meta["data"]["part"] == "labeled"
    assert TERMS[family] <= set(meta["history"][0]) and "rpn_obj" not in meta["history"][0]
    assert {"anchor_min", "anchor_max"} <= set(meta["arch"]) and "test_map" in meta["metrics"]

    r = dpl("eval", taught, "--json")
    assert r.code == 0, r
    found = json.loads(r.stdout)
    assert found["arch"] == f"{family}-cnn-s" and found["n"] == 8 and 0 <= found["map"] <= 1
    assert found["images_per_s"] > 0

    r = dpl("info", "--layers", taught, "--json")
    assert r.code == 0, r
    paths = [row["path"] for row in json.loads(r.stdout)["layers"]]
    assert "backbone.stages.2" in paths and "head.classification_head.cls_logits" in paths

    r = dpl("label", taught, "-o", tmp_path / "boxes", "--json")
    assert r.code == 0, r
    boxes = read_box_labels(tmp_path / "boxes")
    assert boxes.meta["data"]["part"] == "unlabeled" and len(boxes) == 8 and len(boxes.boxes.boxes) > 0
    # the classifier's column for torchvision's background never comes out as a class
    assert boxes.boxes.labels.min() >= 0 and boxes.boxes.labels.max() <= 9
    b = boxes.boxes.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 3] <= 32).all() and (b[:, 2] > b[:, 0]).all()

    # every pseudo-box, however small, trains the student: its anchors are given, not taken from the boxes
    out = tmp_path / "s.safetensors"
    r = dpl("distill", "--labels", tmp_path / "boxes", "--arch", f"{family}-cnn-s:anchor_min=8,anchor_max=16",
            "--min-confidence", "0.0", "--scale-jitter", "0.8,1.2", *FAST, "-o", out)
    assert r.code == 0, r
    meta = artifacts.read_header(out).meta
    assert meta["detect"]["distill"] == "pseudo-boxes" and meta["data"]["part"] == "labeled+pseudo"
    assert TERMS[family] <= set(meta["history"][0])


def test_online_distillation_refuses_a_one_stage_detector_either_side(one_stage, tmp_path):
    family, taught = one_stage
    title = models.DETECTOR_FAMILIES[family].title
    out = tmp_path / "x.safetensors"
    assert_refused(dpl("distill", "--teacher", taught, "--arch", "frcnn-cnn-s", *FAST, "-o", out),
                   str(taught), title, "RPN and RoI heads", "--labels")
    assert_refused(dpl("distill", "--teacher", taught, "--arch", f"{family}-cnn-s", *FAST, "-o", out),
                   "--arch", title, "RPN and RoI heads")
    assert not out.exists()


# ---- ImageNet weights for a torchvision backbone ------------------------------------------------------------

def test_teach_pretrained_loads_the_backbone_and_leaves_the_heads_fresh(hub, tmp_path):
    saved = cache_imagenet_weights("mobilenet_v3_small")
    out = tmp_path / "d.safetensors"
    r = dpl("teach", *SCENES[:-4], "--scenes", "4", "--test-scenes", "2", "--resize", "64", "--arch",
            "frcnn-mobilenet_v3_small", "--pretrained", "--epochs", "1", "--batch-size", "4", "--lr", "1e-30",
            "--device", "cpu", "-o", out)
    assert r.code == 0, r
    ckpt = artifacts.load_checkpoint(out, task="detector")
    url, file = models.pretrained_file("mobilenet_v3_small")
    assert ckpt.meta["parents"] == [{"role": "pretrained", "path": url, "sha256": artifacts.sha256_file(file)}]
    state = ckpt.model_state()
    key = "features.4.block.0.0.weight"
    assert torch.equal(state[f"backbone.{key}"], saved[key])        # lr ~ 0
    # one input channel: the RGB kernel summed (as for classifiers)
    assert torch.allclose(state["backbone.features.0.0.weight"], saved["features.0.0.weight"].sum(1, keepdim=True))


def test_pretrained_resnet_backbone_keeps_its_small_image_stem_and_the_heads_fresh(hub):
    saved = cache_imagenet_weights("resnet18")
    data = scenes.load_boxes("scenes:digits", "train", SPEC).subset(torch.arange(4))
    model, _, parents = detect.make_detector(ModelOptions(arch="retinanet-resnet18", pretrained=True),
                                             data.images, data.truth, data.classes)
    state = model.state_dict()
    assert parents[0]["role"] == "pretrained"
    assert torch.equal(state["backbone.layer3.0.conv1.weight"], saved["layer3.0.conv1.weight"])
    weights = models.load_pretrained_backbone(model, "retinanet-resnet18")
    assert all(k.startswith("backbone.") for k in weights.loaded) and "backbone.bn1.weight" in weights.loaded
    assert "backbone.conv1.weight" in weights.fresh                 # the 3x3 stem of images of 64 px or less
    assert any(k.startswith("head.classification_head") for k in weights.fresh)


def test_refusals_name_the_problem_and_write_nothing(hub, tmp_path):
    out = tmp_path / "x.safetensors"
    assert_refused(dpl("teach", *SCENES, "--arch", "frcnn-cnn-s", "--pretrained", *FAST, "-o", out),
                   "no pretrained weights", "cnn-s", "frcnn-resnet18")
    assert_refused(dpl("teach", *SCENES, "--arch", "fcos-resnet18", "--pretrained", *FAST, "-o", out),
                   "cannot download", "resnet18")
    # a mobile net reduces 32 px to a 1x1 map: no room for anchors
    assert_refused(dpl("teach", *SCENES, "--arch", "retinanet-mobilenet_v3_small", *FAST, "-o", out),
                   "1x1 feature map", "--resize 64")
    assert_refused(dpl("teach", *SCENES, "--arch", "retinanet-cnn-s:roi=4", *FAST, "-o", out), "does not take", "roi")
    assert_refused(dpl("teach", *SCENES, "--arch", "cnn-s", *FAST, "-o", out), "classifier", "retinanet")
    assert not out.exists() and list(hub.glob("*")) == []
