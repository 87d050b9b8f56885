"""dpl plot: every kind writes a valid PNG and SVG, its --json twin holds the plotted numbers, bad input is
refused with one line and nothing written."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_refused, dpl, write_photos

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny Noisy Student chain on digits: teacher t0 (labeled part, validated), its labels, student s1."""
    root = tmp_path_factory.mktemp("plot")
    t0, labels, s1 = root / "t0.safetensors", root / "labels0", root / "s1.safetensors"
    for args in (("teach", "--data", "digits", "--labeled-per-class", "30", "--val-per-class", "5", "--arch", "cnn-s",
                  "--epochs", "2", "--device", "cpu", "-o", t0),
                 ("label", t0, "--device", "cpu", "-o", labels),
                 ("distill", "--labels", labels, "--arch", "cnn-s", "--epochs", "2", "--device", "cpu", "-o", s1)):
        r = dpl(*args)
        assert r.code == 0, r
    return {"root": root, "t0": t0, "labels": labels, "s1": s1}


@pytest.fixture(scope="module")
def evaluated(runs) -> dict:
    """dpl eval --json of the student: the numbers reliability and confusion must plot."""
    r = dpl("eval", runs["s1"], "--json", "--device", "cpu")
    assert r.code == 0, r
    return json.loads(r.stdout)


def info(path: Path) -> dict:
    r = dpl("info", path, "--json")
    assert r.code == 0, r
    return json.loads(r.stdout)


def plot(*args) -> dict:
    """Run `dpl plot ... --json`, check both figures, return the plotted numbers."""
    r = dpl("plot", *args, "--json")
    assert r.code == 0, r
    out = json.loads(r.stdout)
    png, svg = map(Path, out["files"])
    assert png.suffix == ".png" and svg.suffix == ".svg"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as image:
        image.verify()
        assert image.format == "PNG"
    assert ET.parse(svg).getroot().tag.endswith("svg")
    return out["data"]


def test_help_lists_the_kinds():
    r = dpl("plot", "--help")
    assert r.code == 0, r
    for kind in ("curves", "reliability", "confusion", "labels", "lineage", "probe", "bag"):
        assert kind in r.stdout


def test_curves_plot_the_checkpoint_history_and_the_log(runs, tmp_path):
    data = plot("curves", runs["t0"], runs["s1"].with_name("s1.metrics.jsonl"), "-o", tmp_path / "curves")
    assert set(data) == {"t0", "s1"}
    for name in ("t0", "s1"):
        history = info(runs[name])["history"]
        assert data[name]["epoch"] == [h["epoch"] for h in history] == [1, 2]
        assert data[name]["loss"] == pytest.approx([h["loss"] for h in history])
        assert data[name]["lr"] == pytest.approx([h["lr"] for h in history])
        assert data[name]["acc"] == pytest.approx([h["acc"] for h in history])
    assert data["t0"]["val_top1"] == pytest.approx([h.get("val_top1") for h in info(runs["t0"])["history"]])
    assert "pseudo" in data["s1"] and "pseudo" not in data["t0"]


def test_plain_output_prints_both_paths_and_a_suffix_on_the_stem_is_dropped(runs, tmp_path):
    r = dpl("plot", "curves", runs["t0"], "-o", tmp_path / "c.svg")
    assert r.code == 0, r
    assert r.stdout.split() == [str(tmp_path / "c.png"), str(tmp_path / "c.svg")]
    assert_refused(dpl("plot", "curves", runs["t0"], "-o", tmp_path / "c"), "exists", "--force")
    assert dpl("plot", "curves", runs["t0"], "-o", tmp_path / "c", "--force").code == 0


def test_reliability_bins_are_dpl_eval_bins(runs, evaluated, tmp_path):
    data = plot("reliability", runs["s1"], "--device", "cpu", "-o", tmp_path / "rel")
    assert data["ece"] == pytest.approx(evaluated["ece"])
    assert len(data["bins"]) == 15
    for ours, theirs in zip(data["bins"], evaluated["reliability"]["bins"]):
        assert ours["count"] == theirs["count"]
        for key in ("lo", "hi", "confidence", "accuracy"):
            assert ours[key] == pytest.approx(theirs[key])


def test_confusion_matrix_counts_and_normalized_rows(runs, evaluated, tmp_path):
    data = plot("confusion", runs["s1"], "--device", "cpu", "-o", tmp_path / "conf")
    assert data["counts"] == evaluated["confusion"]
    assert data["classes"] == info(runs["s1"])["classes"]
    for row in data["normalized"]:
        assert sum(row) == pytest.approx(1.0)


def test_labels_accuracy_coverage_curve_matches_eval(runs, tmp_path):
    data = plot("labels", runs["labels"], "-o", tmp_path / "labels")
    quality = json.loads(dpl("eval", runs["labels"], "--json").stdout)
    curve = data["curve"]
    assert len(curve["thresholds"]) == 101 and curve["thresholds"][0] == 0 and curve["thresholds"][-1] == 1
    assert curve["coverage"][0] == 1.0 and curve["accuracy"][0] == pytest.approx(quality["accuracy"])
    assert all(a >= b for a, b in zip(curve["coverage"], curve["coverage"][1:]))       # coverage only falls
    assert sum(map(sum, data["histogram"]["counts"].values())) == data["n"] == curve["n"]
    assert "skipped" not in data


def test_labels_of_a_pool_without_truth_skip_the_curve(runs, tmp_path):
    pool = write_photos(tmp_path / "pool", per_class=3, flat=True)
    folder = tmp_path / "pool-labels"
    r = dpl("label", runs["t0"], "--data", f"imagefolder:{pool}", "--device", "cpu", "-o", folder)
    assert r.code == 0, r
    r = dpl("plot", "labels", folder, "-o", tmp_path / "pool-fig", "--json")
    assert r.code == 0, r
    data = json.loads(r.stdout)["data"]
    assert data["skipped"] and "curve" not in data and data["n"] == 30
    notes = [line for line in r.stderr.splitlines() if "skipped the accuracy/coverage curve" in line]
    assert len(notes) == 1 and "no ground truth" in notes[0]
    assert (tmp_path / "pool-fig.png").exists() and (tmp_path / "pool-fig.svg").exists()


def test_lineage_follows_teacher_to_student_with_recorded_top1(runs, tmp_path):
    data = plot("lineage", runs["s1"], "-o", tmp_path / "lineage")
    chain = data["chain"]
    assert [Path(m["path"]).name for m in chain] == ["t0.safetensors", "s1.safetensors"]
    assert [m["generation"] for m in chain] == [0, 1]
    for m, name in zip(chain, ("t0", "s1")):
        assert m["test_top1"] == pytest.approx(info(runs[name])["metrics"]["test_top1"])
        assert m["arch"] == "cnn-s"


def test_probe_per_layer(runs, tmp_path):
    data = plot("probe", runs["t0"], "--layer", "stages.2", "--device", "cpu", "-o", tmp_path / "probe")
    layers = data["layers"]
    assert list(layers) == ["stages.2", "features"]          # the final features drawn last, as the deepest
    for row in layers.values():
        assert 0.0 <= row["top1"] <= 1.0 and row["features"] > 0
    shapes = {row["path"]: row["shape"] for row in json.loads(dpl("info", "--layers", runs["t0"], "--json").stdout)["layers"]}
    c, h, w = shapes["stages.2"]
    assert c * h * w <= 2048 and layers["stages.2"]["features"] == c * h * w      # small enough to be probed whole
    assert layers["features"]["features"] == shapes["pool"][0]


# ---- bad input: one line, exit 2, nothing written -----------------------------------------------------

def nothing_written(folder: Path) -> bool:
    return not any(folder.glob("fig*")) and not any(folder.glob(".fig*"))


def test_an_artifact_without_history_is_refused(tmp_path):
    backbone = tmp_path / "b0.safetensors"
    r = dpl("pretrain", "--data", "digits", "--arch", "cnn-s", "--epochs", "0", "--device", "cpu", "-o", backbone)
    assert r.code == 0, r
    assert_refused(dpl("plot", "curves", backbone, "-o", tmp_path / "fig"), str(backbone), "no training history")
    assert nothing_written(tmp_path)


def test_bad_inputs_are_refused_and_nothing_is_written(runs, tmp_path):
    assert_refused(dpl("plot", "reliability", runs["labels"], "-o", tmp_path / "fig"), str(runs["labels"]), "checkpoint")
    assert_refused(dpl("plot", "confusion", runs["labels"], "-o", tmp_path / "fig"), "checkpoint")
    assert_refused(dpl("plot", "curves", tmp_path / "missing.safetensors", "-o", tmp_path / "fig"), "missing.safetensors")
    assert_refused(dpl("plot", "lineage", tmp_path / "missing.safetensors", "-o", tmp_path / "fig"), "no such file")
    assert_refused(dpl("plot", "labels", runs["t0"], "-o", tmp_path / "fig"), str(runs["t0"]))
    assert_refused(dpl("plot", "curves", runs["t0"], "-o", tmp_path / "nowhere" / "fig"), "does not exist")
    assert nothing_written(tmp_path)
    (tmp_path / "fig.svg").write_text("<svg/>")
    assert_refused(dpl("plot", "lineage", runs["s1"], "-o", tmp_path / "fig"), "fig.svg", "exists")
    assert not (tmp_path / "fig.png").exists() and (tmp_path / "fig.svg").read_text() == "<svg/>"


def test_a_large_colour_bag_draws_its_highest_weights(tmp_path):
    from dpl.core.reporting import figures

    weights = [(i % 7) / 100 for i in range(40)]
    bag = {"bag": "slide-3", "label": 1, "prob": 0.9, "attention": weights,
           "instance_labels": [i % 2 for i in range(40)], "index": 3,
           "images": np.random.default_rng(0).integers(0, 256, (40, 3, 6, 6), dtype=np.uint8)}
    fig, data = figures.bag_weights([bag], "gated", "a bag folder", None)
    shown = data["bags"][0]["shown"]
    assert len(shown) == figures.MAX_BAG_INSTANCES and shown == sorted(shown)
    assert min(weights[i] for i in shown) >= max(w for i, w in enumerate(weights) if i not in shown)
    assert data["bags"][0]["attention"] == weights and "images" not in data["bags"][0]
    assert data["weight"] == "attention weight"
    png, svg = figures.save(fig, tmp_path / "bag")
    assert png.read_bytes()[:8] == PNG_SIGNATURE and ET.parse(svg).getroot().tag.endswith("svg")
