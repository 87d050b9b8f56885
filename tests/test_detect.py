"""Detectors through teach, label, distill and eval on small scenes of digits (core/detect.py, cli/detect.py)."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import assert_refused, dpl
from dpl.core import artifacts
from dpl.core.methods import detect
from dpl.core.data import scenes
from dpl.core.engine import train
from dpl.core.data.boxes import read_box_labels, write_box_shard
from dpl.core.methods.common import ModelOptions

SCENES = ("--data", "scenes:digits", "--canvas", "32", "--objects", "1,2", "--object-size", "10,16", "--scenes", "32",
          "--test-scenes", "16")
FAST = ("--epochs", "1", "--batch-size", "16", "--device", "cpu")
SPEC = scenes.SceneSpec(source="digits", canvas=32, objects=(1, 2), scale=(10, 16), scenes=32, test_scenes=16)


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """A frcnn-cnn-s taught one epoch on 16 labeled scenes of the 32 (the other 16 are unlabeled)."""
    out = tmp_path_factory.mktemp("detector") / "t.safetensors"
    r = dpl("teach", *SCENES, "--labeled", "16", "--arch", "frcnn-cnn-s", *FAST, "-o", out)
    assert r.code == 0, r
    return out


@pytest.fixture(scope="module")
def boxes(detector, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("boxes") / "b"
    r = dpl("label", detector, "-o", out, "--json")
    assert r.code == 0, r
    return out


def test_teach_records_a_detector_that_info_and_eval_read(detector):
    meta = artifacts.read_header(detector).meta
    assert meta["task"] == "detector" and meta["arch"]["name"] == "frcnn-cnn-s"
    assert meta["data"]["part"] == "labeled" and meta["data"]["labeled_images"] == 16
    assert {"cls", "box", "rpn_obj", "rpn_box"} <= set(meta["history"][0])
    assert "test_map" in meta["metrics"]
    r = dpl("eval", detector, "--json")
    assert r.code == 0, r
    found = json.loads(r.stdout)
    assert found["data"] == "scenes:digits:test" and found["n"] == 16 and 0 <= found["map"] <= 1
    assert found["images_per_s"] > 0 and set(found["per_class"]) <= set(map(str, range(10)))
    r = dpl("info", "--layers", detector, "--json")
    assert r.code == 0, r
    paths = [row["path"] for row in json.loads(r.stdout)["layers"]]
    assert "backbone.stages.2" in paths and "roi_heads.box_predictor.cls_score" in paths


def test_export_refuses_a_detector_and_predict_writes_its_boxes(detector, tmp_path):
    r = dpl("export", detector, "-o", tmp_path / "d.onnx")
    assert_refused(r, str(detector), "a detector, not a classifier or a multi-head student", "dpl export serves")
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "boxes.jsonl"
    r = dpl("predict", detector, "--data", "digits:test", "--resize", "32", "-o", out, "--device", "cpu")
    assert r.code == 0, r
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 445 and lines[0]["file"] == "0"
    boxes = [b for line in lines for b in line["boxes"]]
    assert boxes and all(0 <= b["score"] <= 1 and len(b["box"]) == 4 and b["box"][0] <= b["box"][2] for b in boxes)
    r = dpl("predict", detector, "--data", "digits:test", "--resize", "32", "-o", tmp_path / "boxes.csv")
    assert r.code == 0, r
    header = (tmp_path / "boxes.csv").read_text().splitlines()[0]
    assert header == "file,class,score,x0,y0,x1,y1"


def test_eval_seeds_groups_repeated_detector_runs(detector, tmp_path):
    again = tmp_path / "seed1.safetensors"
    r = dpl("teach", *SCENES, "--labeled", "16", "--arch", "frcnn-cnn-s", *FAST, "--seed", "1", "-o", again)
    assert r.code == 0, r
    r = dpl("eval", detector, again, "--seeds", "--json")
    assert r.code == 0, r
    found = json.loads(r.stdout)
    (group,) = found["groups"]
    maps = [x["map"] for x in found["results"]]
    assert group["n"] == 2 and group["seeds"][1] == 1 and group["map_mean"] == pytest.approx(sum(maps) / 2)
    assert {"map50_std", "map75_mean"} <= set(group)
    r = dpl("eval", detector, again, "--seeds")
    shown = " ".join(r.stderr.split())          # the table wraps at the terminal's width
    assert r.code == 0 and "mean ± std over seeds" in shown and "map50" in shown, r


def test_label_resume_keeps_finished_box_shards_and_completes_the_rest(detector, boxes, tmp_path):
    out = tmp_path / "b"
    assert dpl("label", detector, "-o", out, "--shard-size", "8").code == 0
    first, second = sorted(out.glob("shard-*.safetensors"))
    kept = first.stat().st_mtime_ns
    second.unlink()
    assert_refused(dpl("label", detector, "-o", out), "--force", "--resume")
    r = dpl("label", detector, "-o", out, "--shard-size", "8", "--resume")
    assert r.code == 0, r
    assert first.stat().st_mtime_ns == kept and second.exists()
    resumed, whole = read_box_labels(out), read_box_labels(boxes)
    assert torch.equal(resumed.index, whole.index) and torch.allclose(resumed.boxes.boxes, whole.boxes.boxes)


class Oracle(nn.Module):
    """A perfect detector: each image's true boxes (found by its pixels), score 1, torchvision's labels."""

    def __init__(self, data: scenes.BoxData, input_meta: dict):
        super().__init__()
        self.images = torch.stack([img.flatten() for img in data.images])
        self.truth, self.meta = data.truth, input_meta
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        mean, std = self.meta["mean"][0], self.meta["std"][0]
        raw = (x * std + mean).mul(255).round().to(torch.uint8).flatten(1)
        out = []
        for row in raw:
            i = int((self.images == row).all(1).nonzero()[0])
            t = self.truth.of(i)
            out.append({"boxes": t["boxes"], "labels": t["labels"] + 1, "scores": torch.ones(len(t["labels"]))})
        return out


def test_a_perfect_detector_scores_map_one_through_eval(detector, monkeypatch):
    real = detect.load_detector

    def oracle(path):
        _, ckpt = real(path)
        return Oracle(scenes.load_boxes("scenes:digits", "test", SPEC), ckpt.input), ckpt
    monkeypatch.setattr(detect, "load_detector", oracle)
    r = dpl("eval", detector, "--json")
    assert r.code == 0, r
    found = json.loads(r.stdout)
    assert found["map"] == pytest.approx(1.0) and found["map50"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in found["per_class"].values())


def test_label_writes_pseudo_boxes_of_the_unlabeled_part_that_round_trip(detector, boxes, tmp_path):
    folder = read_box_labels(boxes)
    assert folder.meta["data"]["part"] == "unlabeled" and len(folder) == 16
    assert torch.equal(folder.index, torch.arange(16))
    assert folder.meta["teachers"][0]["path"] == str(detector)
    model, ckpt = detect.load_detector(detector)
    full = scenes.load_boxes("scenes:digits", "train", SPEC)
    pool = detect.part_of(full, 16, 0, "unlabeled")
    assert folder.meta["data"]["fingerprint"] == pool.record["fingerprint"]
    direct = detect.detect(model, pool.images, ckpt.input, train.runtime("cpu"))
    assert torch.equal(folder.boxes.offsets, direct.offsets)
    assert torch.allclose(folder.boxes.boxes, direct.boxes) and torch.equal(folder.boxes.labels, direct.labels)
    b = folder.boxes.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 32).all() and (b[:, 2] > b[:, 0]).all()
    # two --shard jobs fill one folder with the same boxes
    for i in (0, 1):
        assert dpl("label", detector, "--shard", f"{i}/2", "-o", tmp_path / "two").code == 0
    two = read_box_labels(tmp_path / "two")
    assert torch.equal(two.index, folder.index) and torch.allclose(two.boxes.boxes, folder.boxes.boxes)


def test_offline_distill_trains_on_true_and_pseudo_boxes(boxes, tmp_path):
    out = tmp_path / "s.safetensors"
    r = dpl("distill", "--labels", boxes, "--arch", "frcnn-cnn-s", "--min-confidence", "0.0", "--scale-jitter",
            "0.8,1.2", "--randaugment", "1,5", *FAST, "-o", out)
    assert r.code == 0, r
    meta = artifacts.read_header(out).meta
    pseudo = meta["detect"]
    assert pseudo["distill"] == "pseudo-boxes" and pseudo["labeled_images"] == 16 and pseudo["pool_images"] == 16
    assert meta["data"]["part"] == "labeled+pseudo" and meta["train"]["scale_jitter"] == [0.8, 1.2]
    assert meta["parents"][0]["role"] == "labels"


def test_balanced_offline_distill_weighs_the_pseudo_part_in_a_pass_of_its_own(boxes, tmp_path):
    out = tmp_path / "s.safetensors"
    r = dpl("distill", "--labels", boxes, "--arch", "frcnn-cnn-s", "--min-confidence", "0.0", "--unlabeled-ratio", "1",
            "--unlabeled-weight", "0.5", *FAST[:2], "--batch-size", "4", "--device", "cpu", "-o", out)
    assert r.code == 0, r
    meta = artifacts.read_header(out).meta
    assert meta["detect"]["steps"] == "balanced" and meta["detect"]["unlabeled_ratio"] == 1.0
    assert meta["detect"]["unlabeled_weight"] == 0.5
    assert {"cls", "box", "pseudo_cls", "pseudo_box", "pseudo_rpn_obj"} <= set(meta["history"][0])
    assert meta["train"]["batch_size"] == 8                 # 4 labeled + 4 pseudo-labeled images a step


def test_the_pseudo_part_is_weighted_and_the_labeled_part_is_not():
    data = scenes.load_boxes("scenes:digits", "train", SPEC).subset(torch.arange(8))
    rt, meta = train.runtime("cpu"), artifacts.input_meta(1, 32, [0.1], [0.3])
    model, _, _ = detect.make_detector(ModelOptions(arch="frcnn-cnn-s"), data.images, data.truth, data.classes)
    model.train()
    batch = ((torch.arange(4), torch.arange(4)), data.images)      # rows 0-3 labeled, 4-7 pseudo-labeled

    def terms(**opts):
        torch.manual_seed(0)
        step = detect.pseudo_objective(model, data.truth, 4, meta, detect.BoxNoise(flip=False),
                                       detect.PseudoOptions(**opts), rt)
        return {k: float(v.detach()) for k, v in step(batch)[0].items()}
    full, half = terms(weight=1.0), terms(weight=0.5)
    assert set(full) == {"cls", "box", "rpn_obj", "rpn_box", "pseudo_cls", "pseudo_box", "pseudo_rpn_obj",
                         "pseudo_rpn_box"}
    assert all(half[k] == pytest.approx(full[k] / 2) for k in full if k.startswith("pseudo_"))
    assert all(half[k] == pytest.approx(full[k]) for k in full if not k.startswith("pseudo_"))


def test_online_chen_distill_runs_end_to_end(detector, tmp_path):
    out = tmp_path / "chen.safetensors"
    r = dpl("distill", "--teacher", detector, "--arch", "frcnn-cnn-s", "--feature-loss", "hint", *FAST, "-o", out)
    assert r.code == 0, r
    ckpt = artifacts.load_checkpoint(out, task="detector")
    assert {"soft", "bound", "hint", "cls"} <= set(ckpt.meta["history"][0])
    assert ckpt.meta["detect"]["distill"] == "chen" and ckpt.meta["detect"]["background_weight"] == 1.5
    assert any(k.startswith("adapter.") for k in ckpt.objective_state())


@pytest.mark.parametrize("term, opts", [
    ("soft", dict(soft_weight=1.0)),
    ("rpn_soft", dict(rpn_weight=1.0)),
    ("bound", dict(bound_weight=1.0, margin=100.0)),
    ("hint", dict(hint_weight=1.0)),
])
def test_each_chen_term_alone_is_nonzero_and_reaches_the_student(term, opts):
    torch.manual_seed(0)
    data = scenes.load_boxes("scenes:digits", "train", SPEC).subset(torch.arange(8))
    rt = train.runtime("cpu")
    student, _, _ = detect.make_detector(ModelOptions(arch="frcnn-cnn-s"), data.images, data.truth, data.classes)
    teacher, _, _ = detect.make_detector(ModelOptions(arch="frcnn-cnn-m"), data.images, data.truth, data.classes)
    teacher.eval().requires_grad_(False)
    adapter = nn.Conv2d(64, 128, 1) if term == "hint" else None
    chosen = detect.ChenOptions(**{"soft_weight": 0.0, "rpn_weight": 0.0, "bound_weight": 0.0, **opts})
    meta = artifacts.input_meta(1, 32, [0.1], [0.3])
    step = detect.chen_objective(student, teacher, adapter, data.truth, meta, meta, detect.BoxNoise(flip=False),
                                 chosen, rt, rpn_soft=True)
    student.train()
    terms, _ = step((torch.arange(8), data.images))
    assert set(terms) - {"cls", "box", "rpn_obj", "rpn_box"} == {term}
    assert float(terms[term].detach()) > 0
    terms[term].backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_box_aware_noise_keeps_boxes_on_their_objects():
    torch.manual_seed(0)
    n, size = 64, 40
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    targets = []
    for i in range(n):
        x1, y1 = int(torch.randint(0, 20, ())), int(torch.randint(0, 20, ()))
        w, h = int(torch.randint(6, 14, ())), int(torch.randint(6, 14, ()))
        images[i, :, y1:y1 + h, x1:x1 + w] = 255
        targets.append({"boxes": torch.tensor([[x1, y1, x1 + w, y1 + h]], dtype=torch.float32),
                        "labels": torch.tensor([i % 3])})
    noise = detect.BoxNoise(flip=True, scale=(0.6, 1.4), photometric=None)
    x, moved = noise.apply(images, targets)
    kept = 0
    for img, t in zip(x, moved):
        lit = img[0] > 127
        inside = torch.zeros_like(lit)
        for b in t["boxes"].round().long().tolist():
            inside[max(b[1] - 1, 0):b[3] + 1, max(b[0] - 1, 0):b[2] + 1] = True     # a pixel of bilinear slack
            core = img[0, b[1] + 1:b[3] - 1, b[0] + 1:b[2] - 1]
            assert core.numel() == 0 or core.float().mean() > 200      # the box is on its object
            kept += 1
        if len(t["boxes"]):        # (a box mostly zoomed off the canvas is dropped; its remnant stays)
            assert not (lit & ~inside).any()                           # no object outside its box
    assert kept >= n * 3 // 4
    # flipping twice is the identity, for images and boxes
    flip = torch.ones(n, dtype=torch.bool)
    back, again = detect.hflip(*detect.hflip(images, targets, flip), flip)
    assert torch.equal(back, images) and all(torch.equal(a["boxes"], t["boxes"]) for a, t in zip(again, targets))


def test_split_by_image_count_is_seeded_and_disjoint():
    a, b = detect.split_images(20, 5, 3)
    assert len(a) == 5 and len(b) == 15 and not set(a.tolist()) & set(b.tolist())
    assert torch.equal(a, detect.split_images(20, 5, 3)[0]) and not torch.equal(a, detect.split_images(20, 5, 4)[0])


def test_bad_input_is_refused_and_nothing_written(detector, boxes, teacher, tmp_path):
    out = tmp_path / "x.safetensors"
    assert_refused(dpl("teach", *SCENES, "--arch", "cnn-s", *FAST, "-o", out), "classifier", "frcnn-")
    assert_refused(dpl("teach", *SCENES[:2], "--canvas", "12", "--object-size", "1,1", "--objects", "1,1",
                       "--scenes", "8", "--arch", "frcnn-cnn-s", *FAST, "-o", out), "cannot serve anchors",
                   "anchor_min=A", "--min-confidence")
    assert_refused(dpl("hint", "--teacher", detector, "-o", out), "detector")           # a detector as a classifier
    assert_refused(dpl("distill", "--teacher", teacher, "--labels", boxes, "-o", out), "one box label folder")
    assert_refused(dpl("eval", detector, teacher), "not a detector")                    # a classifier as a detector
    assert_refused(dpl("eval", detector, "--resize", "40"), "takes 1x32x32")
    assert_refused(dpl("eval", detector, "--knn", "5"), "--knn")
    assert_refused(dpl("label", detector, "--topk", "3", "-o", tmp_path / "l"), "--topk")
    assert_refused(dpl("distill", "--labels", boxes, "--bound-weight", "1", "--arch", "frcnn-cnn-s", "-o", out),
                   "--bound-weight")
    assert_refused(dpl("teach", "--data", "digits", "--canvas", "32", "-o", out), "--canvas")
    assert_refused(dpl("distill", "--labels", boxes, "--labeled", "5", "--arch", "frcnn-cnn-s", "-o", out), "--labeled")
    assert_refused(dpl("distill", "--teacher", detector, "--unlabeled-ratio", "2", "--arch", "frcnn-cnn-s", "-o", out),
                   "live --teacher")
    assert_refused(dpl("distill", "--labels", boxes, "--unlabeled-ratio", "0", "--arch", "frcnn-cnn-s", "-o", out),
                   "--unlabeled-ratio")
    assert dpl("label", detector, "--part", "all", "-o", tmp_path / "all").code == 0
    assert_refused(dpl("distill", "--labels", tmp_path / "all", "--unlabeled-ratio", "2", "--arch", "frcnn-cnn-s",
                       "-o", out), "only pseudo-labeled")
    # pseudo-boxes made for other images
    other = tmp_path / "other"
    other.mkdir()
    made = read_box_labels(boxes)
    write_box_shard(other, {**{k: made.meta[k] for k in ("teachers", "classes", "num_classes", "image_size", "total",
                                                          "world")}, "data": {**made.meta["data"], "fingerprint": "0" * 64}},
                    0, 0, 1, made.index, made.boxes)
    assert_refused(dpl("distill", "--labels", other, "--arch", "frcnn-cnn-s", *FAST, "-o", out), "other images")
    # a teacher with other classes than the data's
    coco = _coco(tmp_path / "coco")
    assert_refused(dpl("distill", "--teacher", detector, "--data", f"coco:{coco}", "--arch", "frcnn-cnn-s", *FAST,
                       "-o", out), "classes")
    assert not out.exists() and not (tmp_path / "l").exists()


def _coco(root: Path) -> Path:
    from PIL import Image

    root.mkdir()
    images, annotations = [], []
    for i in range(3):
        Image.new("L", (32, 32)).save(root / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 32, "height": 32})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 12, 12]})
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": [{"id": 1, "name": "cat"}]}))
    return root
