"""Several experts, one student: the union pool (`--data A+B`), the multi-head student of `distill --labels A/
--labels B/`, and its heads through eval, label and info.

Two experts of different label spaces: the session's digits teacher (10 classes) and a cnn-s taught on a tiny
folder of synthetic images (3 classes: cat, dog, owl) decoded at digits' 8x8; both label the union of their
training images, `digits+imagefolder:PATH`.
"""

import json
from pathlib import Path

import pytest
import torch

from conftest import assert_refused, dpl, write_imagefolder
from dpl.core import artifacts, data
from dpl.core.reporting import evaluate
from dpl.core.engine import train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A labeled folder of 12x12 grey images in three classes, with a test split."""
    return write_imagefolder(tmp_path_factory.mktemp("shapes") / "shapes", per_class=12)


@pytest.fixture(scope="module")
def pool(shapes) -> str:
    return f"digits+imagefolder:{shapes}"


@pytest.fixture(scope="module")
def experts(teacher, shapes, pool, tmp_path_factory) -> dict:
    """The two experts, their label folders of the union pool, and the two-head student."""
    root = tmp_path_factory.mktemp("experts")
    shape_expert = root / "shapes.safetensors"
    r = dpl("teach", "--data", f"imagefolder:{shapes}", "--resize", "8", "--arch", "cnn-s", "--epochs", "6",
            "--batch-size", "8", "--device", "cpu", "-o", shape_expert)
    assert r.code == 0, r
    folders = {"digits": root / "labels-digits", "shapes": root / "labels-shapes"}
    for expert, folder in ((teacher, folders["digits"]), (shape_expert, folders["shapes"])):
        r = dpl("label", expert, "--data", pool, "--device", "cpu", "-o", folder)     # --resize 8: the teacher's
        assert r.code == 0, r
    student = root / "student.safetensors"
    r = dpl("distill", "--labels", folders["digits"], "--labels", folders["shapes"], "--head-names", "digits,shapes",
            "--arch", "cnn-s", "--epochs", "1", "--device", "cpu", "-o", student)
    assert r.code == 0, r
    return {"root": root, "digits": teacher, "shapes": shape_expert, "labels": folders, "student": student}


def test_union_is_the_sources_in_order_unlabeled_and_identified(shapes, pool):
    union = data.load(pool, resize=8)
    digits, folder = data.load("digits"), data.load(f"imagefolder:{shapes}", resize=8)
    assert len(union) == len(digits) + len(folder) and union.shape == (1, 8, 8)
    assert torch.equal(union.images[: len(digits)], digits.images)
    assert torch.equal(union.images[len(digits):], folder.images)
    assert (union.labels == -1).all() and union.classes == []
    described = union.describe()
    assert described["spec"] == f"digits+imagefolder:{shapes}:train" and described["resize"] == 8
    assert described["fingerprint"] == data.load(pool, resize=8).fingerprint() != digits.fingerprint()
    assert data.load(pool + ":test", resize=8).describe()["n"] == 445 + 36
    assert not union.hflip         # digits do not survive a flip


def test_union_refusals(shapes, tmp_path):
    out = tmp_path / "t.safetensors"
    assert_refused(dpl("teach", "--data", f"digits+imagefolder:{shapes}", "-o", out),
                   "digits:train 1x8x8", "1x12x12", "--resize")
    rgb = write_imagefolder(tmp_path / "rgb", mode="RGB")
    assert_refused(dpl("teach", "--data", f"digits+imagefolder:{rgb}", "--resize", "8", "-o", out),
                   "channel counts differ")
    assert_refused(dpl("teach", "--data", "digits:test+fashion-mnist", "-o", out), "one split")
    assert_refused(dpl("teach", "--data", "digits+digits", "-o", out), "twice")
    with pytest.raises(Exception, match="no labels to partition"):
        data.load(f"digits+imagefolder:{shapes}", resize=8, partition=data.Partition(labeled_per_class=5),
                  part="labeled")
    assert not out.exists()


def test_student_records_its_heads_and_learns_each_on_its_slice(experts, pool):
    ckpt = artifacts.load_checkpoint(experts["student"])
    assert ckpt.num_classes == 13 and ckpt.arch["num_classes"] == 13
    heads = ckpt.heads
    assert [h["name"] for h in heads] == ["digits", "shapes"] and [h["offset"] for h in heads] == [0, 10]
    assert heads[0]["classes"] == [str(c) for c in range(10)] and heads[1]["classes"] == ["cat", "dog", "owl"]
    assert heads[0]["labels"]["sha256"] == artifacts.folder_sha256(experts["labels"]["digits"])
    assert heads[0]["test"] == "digits:test" and heads[1]["test"].endswith(":test")
    assert ckpt.meta["classes"][:2] == ["digits:0", "digits:1"] and ckpt.meta["classes"][-1] == "shapes:owl"
    assert ckpt.meta["data"]["spec"] == pool + ":train" and ckpt.meta["pseudo"]["selected"] == 1352 + 36
    for epoch in ckpt.meta["history"]:
        assert epoch["loss"] == pytest.approx(epoch["pseudo_digits"] + epoch["pseudo_shapes"], rel=1e-4)
        assert 0 <= epoch["agree_digits"] <= 1 and "pseudo_conf_shapes" in epoch
    assert {p["role"] for p in ckpt.meta["parents"]} == {"labels"}
    info = json.loads(dpl("info", experts["student"], "--json").stdout)
    assert [p["role"] for p in info["lineage"]] == ["labels", "teacher", "labels", "teacher"]
    r = dpl("info", experts["student"])
    assert "digits: 10 classes" in r.stderr and "shapes: 3 classes (cat, dog, owl), logits 10..12" in r.stderr


def test_eval_measures_each_head_on_its_experts_test_split(experts, shapes):
    r = dpl("eval", experts["digits"], experts["shapes"], experts["student"], "--json", "--device", "cpu")
    assert r.code == 0, r
    results = json.loads(r.stdout)
    assert [(x.get("head"), x["data"]) for x in results] == [
        (None, "digits:test"), (None, f"imagefolder:{shapes}:test"),
        ("digits", "digits:test"), ("shapes", f"imagefolder:{shapes}:test")]
    # The head's figures are those of its slice of the logits, softmaxed alone.
    ckpt = artifacts.load_checkpoint(experts["student"])
    test = data.load("digits:test")
    logits = evaluate.predict(ckpt.build_model(), test.images, ckpt.input, train.runtime("cpu"))[:, :10]
    assert results[2]["top1"] == pytest.approx(evaluate.classification_metrics(logits, test.labels, 10)["top1"])
    assert results[2]["params"] == results[3]["params"]       # one network for both heads
    assert ckpt.meta["metrics"]["test_top1_digits"] == pytest.approx(results[2]["top1"])
    one = json.loads(dpl("eval", experts["student"], "--head", "shapes", "--json", "--device", "cpu").stdout)
    assert one["head"] == "shapes" and one["classes"] == ["cat", "dog", "owl"] and one["n"] == 36
    r = dpl("eval", experts["student"], "--device", "cpu")
    assert r.code == 0 and "(head digits)" in r.stderr and "(head shapes)" in r.stderr


def test_label_writes_a_folder_per_head_that_distill_accepts(experts, pool, tmp_path):
    out = tmp_path / "out"
    r = dpl("label", experts["student"], "--device", "cpu", "-o", out)
    assert r.code == 0, r
    assert r.stdout.split() == [str(out / "digits"), str(out / "shapes")]
    ckpt = artifacts.load_checkpoint(experts["student"])
    union = data.load(pool, resize=8)
    logits = evaluate.predict(ckpt.build_model(), union.images, ckpt.input, train.runtime("cpu"))
    for name, cols in (("digits", slice(0, 10)), ("shapes", slice(10, 13))):
        labels = artifacts.read_labels(out / name)
        assert labels.meta["classes"] == ckpt.head(name)["classes"] and labels.meta["data"]["spec"] == pool + ":train"
        assert labels.meta["teachers"][0]["head"] == name
        assert torch.allclose(labels.probs.float(), logits[:, cols].softmax(1), atol=1e-3)
    # --head writes one; labels of digits alone train an ordinary student
    r = dpl("label", experts["student"], "--head", "digits", "--data", "digits:test", "--device", "cpu", "--json",
            "-o", tmp_path / "one")
    assert r.code == 0, r
    done = json.loads(r.stdout)["heads"]
    assert [d["head"] for d in done] == ["digits"] and done[0]["quality"]["n"] == 445
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["digits"]
    r = dpl("distill", "--labels", tmp_path / "one" / "digits", "--arch", "cnn-s", "--epochs", "1", "--device", "cpu",
            "-o", tmp_path / "s.safetensors")
    assert r.code == 0, r
    assert artifacts.load_checkpoint(tmp_path / "s.safetensors").num_classes == 10


def test_refusals(experts, teacher, tmp_path):
    la, lb, student = experts["labels"]["digits"], experts["labels"]["shapes"], experts["student"]
    out = tmp_path / "s.safetensors"
    two = ["distill", "--labels", la, "--labels", lb, "--arch", "cnn-s", "--epochs", "1", "-o", out]
    plain = tmp_path / "labels-plain"
    assert dpl("label", teacher, "--data", "digits", "-o", plain).code == 0
    assert_refused(dpl("distill", "--labels", plain, "--labels", lb, "-o", out),
                   str(plain), str(lb), "same pool")
    assert_refused(dpl(*two, "--teacher", teacher), "--teacher", "several --labels")
    assert_refused(dpl(*two, "--min-confidence", "0.5"), "--min-confidence")
    assert_refused(dpl(*two, "--head-names", "a"), "--head-names", "2 label folders")
    assert_refused(dpl(*two, "--head-names", "a,a"), "'a'")
    assert_refused(dpl(*two, "--head-names", "a,../b"), "../b")
    assert_refused(dpl("distill", "--labels", la, "--labels", la, "-o", out), "same labels")
    again = tmp_path / "labels-digits-tau2"
    r = dpl("label", teacher, "--data", artifacts.read_labels(la).meta["data"]["spec"], "--tau", "2", "-o", again)
    assert r.code == 0, r
    assert_refused(dpl("distill", "--labels", la, "--labels", again, "-o", out), "same classes", "--ensemble")
    assert_refused(dpl("distill", "--labels", la, "--head-names", "a,b", "-o", out), "--head-names")
    assert not out.exists()
    assert_refused(dpl("distill", "--teacher", student, "--data", "digits", "-o", out), "2 heads", "folder per head")
    assert_refused(dpl("eval", student, "--head", "nope"), "no head 'nope'", "digits, shapes")
    assert_refused(dpl("eval", student, "--data", "digits"), "--head")
    assert_refused(dpl("eval", teacher, "--head", "digits"), "no heads")
    assert_refused(dpl("label", student, "--head", "nope", "-o", tmp_path / "l"), "no head 'nope'")
    assert_refused(dpl("label", teacher, "--ensemble", student, "-o", tmp_path / "l"), "labels alone")
    assert_refused(dpl("label", student, "--head", "digits", "--data", "digits", "--resize", "12", "-o", tmp_path / "l"),
                   "1x8x8", "1x12x12")
    assert not (tmp_path / "l").exists()


def test_heads_metadata_is_validated(experts, tmp_path):
    ckpt = artifacts.load_checkpoint(experts["student"])
    model = ckpt.build_model()
    for heads, words in (([{**h, "offset": 3} for h in ckpt.heads], "corrupt metadata value for 'heads'"),
                         ([{**ckpt.heads[0], "name": "../x"}, ckpt.heads[1]], "corrupt metadata value for 'heads'"),
                         (ckpt.heads[:1], "do not add up to num_classes 13")):
        path = tmp_path / "bad.safetensors"
        artifacts.save_checkpoint(path, model, {**ckpt.meta, "heads": heads})
        with pytest.raises(Exception, match=words.replace("(", r"\(")):
            artifacts.load_checkpoint(path)


def test_a_two_head_student_exports_one_output_per_head_and_predicts_both(experts, shapes, tmp_path):
    out = tmp_path / "two.onnx"
    r = dpl("export", experts["student"], "-o", out, "--data", f"imagefolder:{shapes}", "--json")
    assert r.code == 0, r
    assert json.loads(r.stdout)["parity"]["top1_agreement"] == 1.0
    from dpl.core import deploy

    info = deploy.onnx_info(out)
    assert info["outputs"] == ["logits_digits", "logits_shapes"] and [h["name"] for h in info["heads"]] == \
        ["digits", "shapes"]
    predictions = tmp_path / "p.jsonl"
    r = dpl("predict", out, "--data", f"imagefolder:{shapes}", "-o", predictions, "--topk", "2")
    assert r.code == 0, r
    first = json.loads(predictions.read_text().splitlines()[0])
    assert set(first["heads"]) == {"digits", "shapes"} and len(first["heads"]["shapes"]) == 2
    assert first["heads"]["shapes"][0]["class"] in ("cat", "dog", "owl")
