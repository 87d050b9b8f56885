import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import assert_refused, dpl, write_imagefolder
from dpl.core import artifacts, data
from dpl.core.reporting import evaluate
from dpl.core.methods import label
from dpl.core.engine import train

PER_CLASS = ["--labeled-per-class", "10"]

# the recipe's summary table, written to a file, keeps its long temporary paths whole
WIDE = {**os.environ, "COLUMNS": "400"}


@pytest.fixture(scope="module")
def small_teacher(tmp_path_factory) -> Path:
    """A cnn-s teacher trained on 10 labels per class of digits."""
    out = tmp_path_factory.mktemp("t0") / "t0.safetensors"
    r = dpl("teach", *PER_CLASS, "--arch", "cnn-s", "--epochs", "40", "--batch-size", "32", "-o", out)
    assert r.code == 0, r
    return out


@pytest.fixture(scope="module")
def soft_labels(small_teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("labels") / "labels0"
    r = dpl("label", small_teacher, "--shard-size", "300", "-o", out)
    assert r.code == 0, r
    return out


def test_shards_round_trip_exactly(small_teacher, soft_labels):
    shards = sorted(p.name for p in soft_labels.iterdir())
    assert shards == [f"shard-00000-0000{i}.safetensors" for i in range(5)]   # 1,252 samples / 300
    labels = artifacts.read_labels(soft_labels)
    unlabeled = data.load("digits", partition=data.Partition(labeled_per_class=10), part="unlabeled")
    assert labels.meta["data"]["fingerprint"] == unlabeled.fingerprint()
    assert torch.equal(labels.index, torch.arange(len(unlabeled)))
    ckpt = artifacts.load_checkpoint(small_teacher)
    probs = evaluate.predict(ckpt.build_model(), unlabeled.images, ckpt.input, train.runtime("cpu")).softmax(1)
    assert labels.probs.dtype == torch.float16 and labels.index.dtype == labels.label.dtype == torch.int64
    assert torch.allclose(labels.probs.float(), probs, atol=1e-3)
    assert torch.equal(labels.label, probs.argmax(1))
    assert torch.allclose(labels.confidence, probs.max(1).values)
    assert labels.meta["teachers"][0]["sha256"] == artifacts.sha256_file(small_teacher)


def test_label_reports_quality_and_eval_of_a_folder_agrees(small_teacher, soft_labels, tmp_path):
    r = dpl("label", small_teacher, "--json", "-o", tmp_path / "again")
    assert r.code == 0, r
    quality = json.loads(r.stdout)["quality"]
    r = dpl("eval", soft_labels, "--json")
    assert r.code == 0, r
    result = json.loads(r.stdout)
    assert result["accuracy"] == pytest.approx(quality["accuracy"]) and result["n"] == 1252
    assert 0.5 < result["accuracy"] <= 1.0
    covered = [row["coverage"] for row in result["thresholds"]]
    assert covered == sorted(covered, reverse=True)


@pytest.mark.parametrize("mode", [["--hard"], ["--topk", "3"], []])
def test_every_label_mode_trains_a_student(small_teacher, tmp_path, mode):
    labels_dir, out = tmp_path / "labels", tmp_path / "s.safetensors"
    assert dpl("label", small_teacher, *mode, "--tau", "2", "-o", labels_dir).code == 0
    stored = artifacts.read_labels(labels_dir)
    assert stored.mode == {"--hard": "hard", "--topk": "topk"}.get(mode[0] if mode else "", "soft")
    if stored.mode == "topk":
        assert stored.topk_index.dtype == torch.int32 and stored.topk_index.shape == (1252, 3)
    r = dpl("distill", "--labels", labels_dir, "--arch", "cnn-s", "--epochs", "2", "-o", out)
    assert r.code == 0, r
    meta = json.loads(dpl("info", out, "--json").stdout)
    assert meta["distill"]["tau"] == 2 and meta["pseudo"]["selected"] == 1252
    assert {p["role"] for p in meta["parents"]} == {"labels"}
    assert [p["role"] for p in meta["lineage"]] == ["labels", "teacher"]


def test_topk_targets_renormalise_and_re_temper():
    stored = artifacts.Labels(Path("x"), {"mode": "topk", "tau": 2.0, "num_classes": 4}, torch.arange(1),
                              torch.tensor([0]), torch.tensor([0.6]), topk_index=torch.tensor([[0, 2]], dtype=torch.int32),
                              topk_prob=torch.tensor([[0.6, 0.2]], dtype=torch.float16))
    same = label.soft_targets(stored, torch.tensor([0]), tau=2.0, hard=False)
    assert torch.allclose(same, torch.tensor([[0.75, 0.0, 0.25, 0.0]]), atol=1e-3)
    sharper = label.soft_targets(stored, torch.tensor([0]), tau=1.0, hard=False)   # p ** 2, renormalised
    assert torch.allclose(sharper, torch.tensor([[0.9, 0.0, 0.1, 0.0]]), atol=1e-3)


def test_confidence_filter_and_balance_select_what_they_claim(soft_labels, tmp_path):
    labels = artifacts.read_labels(soft_labels)
    threshold = float(labels.confidence.median())
    rows = label.select(labels, min_confidence=threshold)
    assert len(rows) == int((labels.confidence >= threshold).sum())
    balanced = label.select(labels, balance=150)
    counts = torch.bincount(labels.label[balanced], minlength=10)
    present = torch.bincount(labels.label, minlength=10) > 0
    assert (counts[present] == 150).all()
    for c in range(10):       # a class with more keeps its most confident; one with fewer is duplicated
        members = (labels.label == c).nonzero().squeeze(1)
        chosen = balanced[labels.label[balanced] == c]
        if len(members) >= 150:
            assert len(set(chosen.tolist())) == 150
            assert labels.confidence[chosen].min() >= labels.confidence[members].topk(150).values.min()
        elif len(members):
            assert set(chosen.tolist()) == set(members.tolist())
    out = tmp_path / "s.safetensors"
    r = dpl("distill", "--labels", soft_labels, "--min-confidence", threshold, "--balance", "60",
            "--arch", "cnn-s", "--epochs", "1", "-o", out)
    assert r.code == 0, r
    expected = len(label.select(labels, threshold, 60))
    assert json.loads(dpl("info", out, "--json").stdout)["pseudo"]["selected"] == expected


def test_online_kd_with_full_labels_and_with_a_partition(teacher, small_teacher, tmp_path):
    out = tmp_path / "kd.safetensors"
    r = dpl("distill", "--teacher", teacher, "--arch", "cnn-s", "--tau", "4", "--alpha", "0.9", "--epochs", "3", "-o", out)
    assert r.code == 0, r
    meta = json.loads(dpl("info", out, "--json").stdout)
    assert meta["pseudo"] is None and meta["data"]["n"] == len(data.load("digits"))
    assert meta["parents"][0]["role"] == "teacher" and meta["metrics"]["test_top1"] > 0.5
    out2 = tmp_path / "ns.safetensors"
    r = dpl("distill", "--teacher", small_teacher, "--teacher", small_teacher, "--arch", "cnn-s", "--epochs", "1",
            "--randaugment", "2,9", "--dropout", "0.2", "-o", out2)
    assert r.code == 0, r
    meta = json.loads(dpl("info", out2, "--json").stdout)
    assert meta["data"]["part"] == "labeled" and meta["pseudo"]["part"] == "unlabeled"


def test_noisy_student_student_beats_its_teacher_on_digits(small_teacher, soft_labels, tmp_path):
    out = tmp_path / "s1.safetensors"
    r = dpl("distill", "--labels", soft_labels, "--arch", "cnn-m", "--epochs", "10", "--randaugment", "2,9",
            "--dropout", "0.3", "--stochastic-depth", "0.2", "-o", out)
    assert r.code == 0, r
    student = json.loads(dpl("eval", out, "--json").stdout)["top1"]
    teacher = json.loads(dpl("eval", small_teacher, "--json").stdout)["top1"]
    assert student > teacher


# ---- bad input ------------------------------------------------------------------------------------

def test_labels_for_other_data_are_refused(soft_labels, tmp_path):
    out = tmp_path / "s.safetensors"
    assert_refused(dpl("distill", "--labels", soft_labels, "--labeled-per-class", "20", "-o", out),
                   "labels were made for", "not for")
    assert not out.exists()


def test_incomplete_and_mixed_label_folders_are_refused(small_teacher, teacher, soft_labels, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(soft_labels, broken)
    (broken / "shard-00000-00002.safetensors").unlink()
    out = tmp_path / "s.safetensors"
    assert_refused(dpl("distill", "--labels", broken, "-o", out), "incomplete", "shard-00000-00002")
    other = tmp_path / "other"
    assert dpl("label", teacher, *PER_CLASS, "--shard-size", "300", "-o", other).code == 0
    mixed = tmp_path / "mixed"
    shutil.copytree(soft_labels, mixed)
    shutil.copy(other / "shard-00000-00001.safetensors", mixed / "shard-00000-00001.safetensors")
    assert_refused(dpl("distill", "--labels", mixed, "-o", out), "mixed label folder", "teachers")
    assert_refused(dpl("eval", mixed), "mixed label folder")
    assert not out.exists()


def test_class_count_mismatch_is_refused(tmp_path, teacher):
    root = write_imagefolder(tmp_path / "imgs", size=8, per_class=10)
    out = tmp_path / "l"
    assert_refused(dpl("label", teacher, "--data", f"imagefolder:{root}", "-o", out), "predicts 10 classes", "has 3")
    assert_refused(dpl("distill", "--teacher", teacher, "--data", f"imagefolder:{root}", "-o", tmp_path / "s"),
                   "predicts 10 classes")
    assert not out.exists()


@pytest.mark.parametrize("args,words", [
    (["--topk", "11"], ["--topk", "10 classes"]),
    (["--tau", "0"], ["--tau must be"]),
    (["--topk", "3", "--hard"], ["--topk"]),
])
def test_label_bad_options(small_teacher, tmp_path, args, words):
    out = tmp_path / "labels"
    assert_refused(dpl("label", small_teacher, *args, "-o", out), *words)
    assert not out.exists()


def test_distill_bad_options(soft_labels, small_teacher, tmp_path):
    out = tmp_path / "s.safetensors"
    assert_refused(dpl("distill", "--labels", soft_labels, "--tau", "-1", "-o", out), "--tau must be")
    assert_refused(dpl("distill", "-o", out), "--labels", "--teacher")
    assert_refused(dpl("distill", "--teacher", small_teacher, "--balance", "5", "-o", out), "--balance")
    flat = tmp_path / "flat"
    assert dpl("label", small_teacher, "--tau", "50", "-o", flat).code == 0
    assert_refused(dpl("distill", "--labels", flat, "--min-confidence", "0.9", "-o", out), "no pseudo-label", "0.9")
    assert not out.exists()


def test_label_output_is_refused_when_it_exists(small_teacher, soft_labels):
    before = sorted(p.name for p in soft_labels.iterdir())
    assert_refused(dpl("label", small_teacher, "-o", soft_labels), "exists", "--force")
    assert sorted(p.name for p in soft_labels.iterdir()) == before


# ---- the Makefile loop -----------------------------------------------------------------------------

def test_noisy_student_makefile_runs_and_rerun_is_a_noop(tmp_path):
    recipe = Path(__file__).parents[1] / "recipes" / "noisy-student"
    args = ["make", "-C", str(recipe), f"OUT={tmp_path}/ns", "ITERS=2", "EPOCHS=1", "TEACHER_EPOCHS=3",
            "ARCHS=cnn-s cnn-s cnn-m"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600, env=WIDE)
    assert first.returncode == 0, first.stderr
    for name in ("model0.safetensors", "labels0", "model1.safetensors", "labels1", "model2.safetensors", "summary.txt"):
        assert (tmp_path / "ns" / name).exists()
    summary = (tmp_path / "ns" / "summary.txt").read_text()
    assert "model2.safetensors" in summary and "top1" in summary
    up_to_date = subprocess.run([*args[:3], "-q", *args[3:], f"{tmp_path}/ns/summary.txt"])
    assert up_to_date.returncode == 0
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=WIDE)
    assert again.returncode == 0 and not [l for l in again.stdout.splitlines() if " -o " in l]   # no command ran


def test_resize_follows_the_artifacts_down_the_pipeline(tmp_path):
    """A teacher trained on --resize 12 digits: label, distill, hint and eval of the labels resize alike by default."""
    teacher, labels = tmp_path / "t.safetensors", tmp_path / "labels"
    assert dpl("teach", *PER_CLASS, "--resize", "12", "--arch", "cnn-s", "--epochs", "2", "-o", teacher).code == 0
    r = dpl("label", teacher, "--json", "-o", labels)
    assert r.code == 0, r
    made = artifacts.read_labels(labels).meta["data"]
    assert made["resize"] == 12 and made["part"] == "unlabeled"
    assert dpl("eval", labels, "--json").code == 0
    for args in (["distill", "--labels", labels], ["hint", "--teacher", teacher, "--guided-layer", "stages.1.0"]):
        out = tmp_path / f"{args[0]}.safetensors"
        r = dpl(*args, "--arch", "fitnet-thin", "--epochs", "1", "-o", out)
        assert r.code == 0, r
        ckpt = artifacts.load_checkpoint(out)
        assert ckpt.input["size"] == 12 and ckpt.meta["data"]["resize"] == 12
    r = dpl("label", teacher, "--resize", "8", "-o", tmp_path / "wrong")
    assert_refused(r, "12x12", "8x8")
