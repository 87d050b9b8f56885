"""dpl plot keypoints: a grid of test images with true and predicted keypoints, written as a valid PNG and SVG; its
--json twin holds each image's position, predicted coordinates, confidence and PCK@0.1 (the PCK recomputed here
from the printed coordinates and the rebuilt truth); --count past the data draws it all and says so; a classifier,
a folder, classification data and an existing output are refused in one line with nothing written."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_refused, assert_usage_error, dpl

pytestmark = pytest.mark.usefixtures("one_thread")

POSES = ("--data", "poses", "--canvas", "32", "--pose-scale", "0.92,0.95", "--poses", "64", "--test-poses", "16")
FAST = ("--arch", "cnn-s", "--epochs", "1", "--batch-size", "32", "--device", "cpu")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEST_POSES = 16


@pytest.fixture(scope="module")
def keypoint_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plot-keypoints") / "kp.safetensors"
    r = dpl("teach", *POSES, *FAST, "-o", out)
    assert r.code == 0, r
    return out


def plot(*args) -> tuple[dict, str]:
    """Run `dpl plot keypoints ... --json`, check both figures; the plotted numbers and stderr."""
    r = dpl("plot", "keypoints", *args, "--device", "cpu", "--json")
    assert r.code == 0, r
    out = json.loads(r.stdout)
    png, svg = map(Path, out["files"])
    assert png.suffix == ".png" and svg.suffix == ".svg"
    assert png.stat().st_size > 0 and png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as image:
        image.verify()
        assert image.format == "PNG"
    assert ET.parse(svg).getroot().tag.endswith("svg")
    return out["data"], r.stderr


def nothing_written(folder: Path) -> bool:
    return not any(folder.glob("fig*")) and not any(folder.glob(".fig*"))


def test_the_grid_plots_each_image_with_its_keypoints_and_pck(keypoint_model, tmp_path):
    import torch

    from dpl.core import artifacts
    from dpl.core.data import poses
    from dpl.core.methods.keypoints import pck

    data, _ = plot(keypoint_model, "--count", "5", "--seed", "3", "-o", tmp_path / "grid")
    k = len(poses.NAMES)
    assert data["names"] == poses.NAMES and data["threshold"] == 0.1
    assert data["parts"] == {p: list(v) for p, v in poses.PARTS.items()}
    assert data["skeleton"] == [list(e) for e in poses.SKELETON]
    shown = data["images"]
    assert len(shown) == 5
    index = [e["index"] for e in shown]
    assert index == sorted(set(index)) and all(0 <= i < TEST_POSES for i in index)
    for e in shown:
        assert len(e["coords"]) == k and all(len(xy) == 2 for xy in e["coords"])
        assert all(0 <= v <= 32 for xy in e["coords"] for v in xy)           # decoded within the 32-px canvas
        assert len(e["confidence"]) == k and len(e["truth"]) == k
        assert e["pck"] is None or 0 <= e["pck"] <= 1
    # The truth is the checkpoint's test split, and each title's PCK that of the printed coordinates.
    test = poses.build_poses(poses.pose_spec_of(artifacts.read_header(keypoint_model).meta["data"]), "test")
    assert np.allclose([e["truth"] for e in shown], test.keypoints[index].numpy())
    for e, i in zip(shown, index):
        found = pck(torch.tensor([e["coords"]]), test.keypoints[i: i + 1], test.boxes[i: i + 1])["all"][0.1]
        assert e["pck"] == pytest.approx(found)


def test_the_seed_chooses_the_images_and_plain_output_prints_both_paths(keypoint_model, tmp_path):
    first, _ = plot(keypoint_model, "--count", "5", "--seed", "3", "-o", tmp_path / "a")
    again, _ = plot(keypoint_model, "--count", "5", "--seed", "3", "-o", tmp_path / "b")
    other, _ = plot(keypoint_model, "--count", "5", "--seed", "4", "-o", tmp_path / "c")
    assert first == again
    assert [e["index"] for e in first["images"]] != [e["index"] for e in other["images"]]
    r = dpl("plot", "keypoints", keypoint_model, "-o", tmp_path / "plain.png", "--device", "cpu")
    assert r.code == 0, r
    assert r.stdout.split() == [str(tmp_path / "plain.png"), str(tmp_path / "plain.svg")]
    data, _ = plot(keypoint_model, "-o", tmp_path / "plain", "--force")
    assert len(data["images"]) == 8                                          # the default --count


def test_a_count_past_the_data_draws_all_of_it_and_says_so(keypoint_model, tmp_path):
    data, stderr = plot(keypoint_model, "--count", "20", "-o", tmp_path / "all")
    assert [e["index"] for e in data["images"]] == list(range(TEST_POSES))
    assert "--count 20" in stderr and f"{TEST_POSES} images" in stderr
    assert_usage_error(dpl("plot", "keypoints", keypoint_model, "--count", "33", "-o", tmp_path / "fig"), "--count")
    assert_usage_error(dpl("plot", "keypoints", keypoint_model, "--count", "0", "-o", tmp_path / "fig"), "--count")
    assert nothing_written(tmp_path)


def test_what_is_not_a_keypoint_model_or_its_data_is_refused(keypoint_model, tmp_path):
    classifier = tmp_path / "clf.safetensors"
    r = dpl("teach", "--arch", "cnn-s", "--epochs", "1", "--labeled-per-class", "2", "--device", "cpu",
            "-o", classifier)
    assert r.code == 0, r
    fig = tmp_path / "fig"
    assert_refused(dpl("plot", "keypoints", classifier, "-o", fig), str(classifier), "a classifier", "keypoint")
    assert_refused(dpl("plot", "keypoints", tmp_path, "-o", fig), "a folder, not a keypoint checkpoint")
    assert_refused(dpl("plot", "keypoints", tmp_path / "missing.safetensors", "-o", fig), "no such file")
    assert_refused(dpl("plot", "keypoints", keypoint_model, "--data", "digits", "-o", fig, "--device", "cpu"),
                   "--data digits", "classification data")
    assert nothing_written(tmp_path)
    (tmp_path / "fig.png").write_bytes(b"old")
    assert_refused(dpl("plot", "keypoints", keypoint_model, "-o", fig), "fig.png", "exists")
    assert (tmp_path / "fig.png").read_bytes() == b"old" and not (tmp_path / "fig.svg").exists()


def test_the_drawing_keeps_the_pixel_convention_and_leaves_out_unlabeled_truth():
    from dpl.core.reporting import figures

    images = np.zeros((3, 1, 10, 12), dtype=np.uint8)
    truth = np.zeros((3, 4, 3))
    truth[..., :2] = [[0.5, 0.5], [11.5, 9.5], [6.0, 5.0], [20.0, 5.0]]
    truth[..., 2] = [2, 1, 2, 0]                                            # the last one outside: not drawn
    coords = truth[..., :2] + 0.25
    fig, data = figures.keypoint_grid(images, truth, coords, np.full((3, 4), 0.5), [1.0, None, float("nan")],
                                      [(0, 1), (1, 2), (2, 3)], {"body": [0, 1], "hands": [2, 3]},
                                      indices=[4, 7, 9])
    assert [e["index"] for e in data["images"]] == [4, 7, 9] and [e["pck"] for e in data["images"]] == [1.0, None, None]
    assert data["names"] == ["0", "1", "2", "3"] and data["images"][0]["coords"][3] == [20.25, 5.25]
    ax = fig.axes[0]
    assert ax.title.get_text() == "#4  PCK@0.1 1.00" and fig.axes[1].title.get_text() == "#7  PCK@0.1 n/a"
    assert tuple(ax.images[0].get_extent()) == (0, 12, 10, 0)              # pixel i spans [i, i + 1)
    assert ax.get_xlim() == (0, 12) and ax.get_ylim() == (10, 0)
    skeleton, predicted, true = ax.collections
    assert len(skeleton.get_segments()) == 3 and len(predicted.get_offsets()) == 4
    assert np.allclose(true.get_offsets(), truth[0, :3, :2])               # visibility 0 left out of the truth
    assert sum(ax.get_visible() for ax in fig.axes) == 3


def test_plot_help_lists_the_kind():
    r = dpl("plot", "--help")
    assert r.code == 0 and "keypoints" in r.stdout, r
    r = dpl("plot", "keypoints", "--help")
    assert r.code == 0 and "--count" in r.stdout and "--seed" in r.stdout, r
