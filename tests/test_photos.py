"""Own images: photo folders of any size, flat unlabeled pools, tar shards, odd files, streamed and in-memory."""

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import assert_refused, dpl, write_photos
from dpl.core import artifacts, data
from dpl.core.data import images

CPU = ("--device", "cpu")

# the recipe's summary table, written to a file, keeps its long temporary paths whole
WIDE = {**os.environ, "COLUMNS": "400"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """photos/labeled/classK/*.jpg (10 per class) and photos/unlabeled/*.jpg (30 per class, flat), and a
    teacher trained on the labeled folder at 16 px."""
    root = tmp_path_factory.mktemp("photos")
    write_photos(root / "labeled", per_class=10)
    write_photos(root / "unlabeled", per_class=30, start=10, flat=True)
    teacher = root / "t.safetensors"
    r = dpl("teach", "--data", f"imagefolder:{root / 'labeled'}", "--resize", "16", "--arch", "cnn-s",
            "--epochs", "6", "--batch-size", "32", *CPU, "-o", teacher)
    assert r.code == 0, r
    assert "held in memory" in r.stderr and "100 images at 3x16x16" in r.stderr, r
    return root, teacher


def read_by_key(folder):
    labels = artifacts.read_labels(folder)
    return {k.decode(): p for k, p in zip(labels.keys, labels.probs.float())}


def test_flat_pool_labels_then_distills_with_the_teachers_labeled_data(photos, tmp_path):
    root, teacher = photos
    pool = f"imagefolder:{root / 'unlabeled'}"
    r = dpl("label", teacher, "--data", pool, *CPU, "-o", tmp_path / "labels")
    assert r.code == 0, r
    labels = artifacts.read_labels(tmp_path / "labels")
    assert len(labels) == 300 and labels.meta["data"]["spec"] == pool + ":train"
    assert labels.meta["data"]["resize"] == 16 and labels.meta["data"]["channels"] == 3   # the teacher's input
    assert {k.decode() for k in labels.keys} == {p.name for p in (root / "unlabeled").iterdir()}
    assert labels.meta["num_classes"] == 10 and labels.meta["classes"][0] == "class0"
    r = dpl("distill", "--labels", tmp_path / "labels", "--arch", "cnn-s", "--epochs", "2", "--batch-size", "16",
            *CPU, "-o", tmp_path / "s.safetensors")
    assert r.code == 0, r
    assert "labeled data imagefolder:" in r.stderr and "as the teacher was trained" in r.stderr, r
    meta = artifacts.read_header(tmp_path / "s.safetensors").meta
    assert meta["data"]["spec"].endswith("labeled:train") and meta["data"]["n"] == 100
    assert meta["pseudo"]["n"] == 300 and meta["pseudo"]["labeled_by_teacher"] == 300
    r = dpl("eval", tmp_path / "s.safetensors", "--data", f"imagefolder:{root / 'labeled'}:train", "--json", *CPU)
    assert r.code == 0 and json.loads(r.stdout)["n"] == 100, r
    r = dpl("eval", tmp_path / "labels", "--json")          # a pool has no ground truth to measure against
    assert r.code == 2 and "no ground truth" in r.stderr, r


def test_a_grown_pool_still_fits_its_labels_and_another_pool_is_refused(photos, tmp_path):
    root, teacher = photos
    pool = tmp_path / "pool"
    write_photos(pool, per_class=3, start=10, flat=True)
    assert dpl("label", teacher, "--data", f"imagefolder:{pool}", *CPU, "-o", tmp_path / "labels").code == 0
    write_photos(pool, per_class=5, start=10, flat=True)           # 20 more photos arrive
    r = dpl("distill", "--labels", tmp_path / "labels", "--data", f"imagefolder:{pool}", "--arch", "cnn-s",
            "--epochs", "1", *CPU, "-o", tmp_path / "s.safetensors")
    assert r.code == 0, r
    other = write_photos(tmp_path / "other", per_class=3, start=40, flat=True)
    r = dpl("distill", "--labels", tmp_path / "labels", "--data", f"imagefolder:{other}", "--arch", "cnn-s",
            "--epochs", "1", *CPU, "-o", tmp_path / "s2.safetensors")
    assert_refused(r, "30 of its 30 labeled samples are not in", "first missing", "another pool")
    assert not (tmp_path / "s2.safetensors").exists()


def test_streamed_and_in_memory_give_the_same_labels_and_the_same_weights(photos, tmp_path):
    root, teacher = photos
    pool = f"imagefolder:{root / 'unlabeled'}"
    r = dpl("label", teacher, "--data", pool, "--stream", "--workers", "2", "--batch-size", "64", *CPU,
            "-o", tmp_path / "streamed")
    assert r.code == 0 and "streamed: decoded on demand" in r.stderr, r
    assert dpl("label", teacher, "--data", pool, "--in-memory", *CPU, "-o", tmp_path / "held").code == 0
    a, b = read_by_key(tmp_path / "streamed"), read_by_key(tmp_path / "held")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run = ("teach", "--data", f"imagefolder:{root / 'labeled'}", "--resize", "16", "--arch", "cnn-s", "--epochs", "2",
           "--batch-size", "32", "--randaugment", "2,9", *CPU)
    assert dpl(*run, "--stream", "--workers", "1", "-o", tmp_path / "s.safetensors").code == 0
    assert dpl(*run, "--in-memory", "-o", tmp_path / "m.safetensors").code == 0
    ws, wm = load_file(str(tmp_path / "s.safetensors")), load_file(str(tmp_path / "m.safetensors"))
    assert all(torch.equal(ws[k], wm[k]) for k in wm)


def test_resume_continues_a_streamed_run_exactly(photos, tmp_path):
    root, _ = photos
    run = ("teach", "--data", f"imagefolder:{root / 'labeled'}", "--resize", "12", "--arch", "cnn-s", "--epochs", "2",
           "--batch-size", "32", "--stream", "--workers", "1", *CPU)
    assert dpl(*run, "--keep-state", "-o", tmp_path / "a.safetensors").code == 0     # keeps the epoch-1 state
    (tmp_path / "b.safetensors.resume").write_bytes((tmp_path / "a.safetensors.resume").read_bytes())
    r = dpl(*run, "--resume", "-o", tmp_path / "b.safetensors")
    assert r.code == 0, r
    wa, wb = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_pretrain_on_an_unlabeled_pool_then_fine_tune(photos, tmp_path):
    root, _ = photos
    backbone = tmp_path / "b.safetensors"
    r = dpl("pretrain", "--data", f"imagefolder:{root / 'unlabeled'}", "--resize", "16", "--task", "rotation",
            "--arch", "cnn-s", "--epochs", "1", *CPU, "-o", backbone)
    assert r.code == 0, r
    r = dpl("teach", "--data", f"imagefolder:{root / 'labeled'}", "--init", backbone, "--arch", "cnn-s",
            "--epochs", "1", *CPU, "-o", tmp_path / "t.safetensors")     # the size follows the init
    assert r.code == 0 and "at 3x16x16" in r.stderr, r


def test_mixed_sizes_keep_their_aspect_ratio(tmp_path):
    folder = tmp_path / "wide"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    wide[:, 30:50] = 255                   # a centred vertical bar a quarter of the width
    Image.fromarray(wide).save(folder / "a" / "wide.png")
    Image.fromarray(np.full((100, 50, 3), 128, dtype=np.uint8)).save(folder / "b" / "tall.png")
    ds = data.load(f"imagefolder:{folder}", resize=20)
    assert ds.shape == (3, 20, 20)
    bar = ds.images[0, 0, 10]              # 80x40 -> 40x20, centre 20: the bar covers columns 5..14
    assert bar[6:14].min() == 255 and bar[:4].max() == 0 and bar[16:].max() == 0
    assert data.load(f"imagefolder:{folder}").shape == (3, 45, 45)    # default: the median shorter side


def write_odd_files(folder):
    """One of each kind of file a real photo folder holds; returns the names that cannot be decoded."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8))
    photo.save(folder / "plain.jpg")
    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6                       # rotate 90 degrees clockwise to display
    photo.save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(np.full((20, 20), 32896, dtype=np.uint16)).save(folder / "deep.png")   # 16-bit grey
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., :3], rgba[:10, :, 3] = 200, 255          # top half opaque, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    photo.convert("P").save(folder / "anim.gif", save_all=True, append_images=[photo.convert("P").rotate(90)])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image at all\n")
    return {"truncated.jpg", "empty.png", "notes.jpg"}


def test_odd_files_decode_or_are_skipped_and_recorded(photos, tmp_path):
    root, teacher = photos
    bad = write_odd_files(tmp_path / "odd")
    ds = data.load(f"imagefolder:{tmp_path / 'odd'}", resize=20, channels=3)
    assert set(ds.skipped) == bad and len(ds) == 6
    by_key = {k.decode(): ds.images[i] for i, k in enumerate(ds.keys)}
    plain, rotated = by_key["plain.jpg"].float(), by_key["rotated.jpg"].float()
    assert (plain - rotated).abs().mean() > 20                          # EXIF orientation was applied:
    upright = data.load(f"imagefolder:{tmp_path / 'odd'}", resize=20, channels=3)   # same decode, same pixels
    assert torch.equal(upright.images, ds.images)
    assert by_key["deep.png"].unique().tolist() == [128]                # 16-bit scaled, not clipped to 255
    alpha = by_key["alpha.png"]
    assert alpha[:, :8].unique().tolist() == [200] and alpha[:, 12:].unique().tolist() == [0]
    for mode in ("--stream", "--in-memory"):
        out = tmp_path / f"labels{mode}"
        r = dpl("label", teacher, "--data", f"imagefolder:{tmp_path / 'odd'}", mode, *CPU, "-o", out)
        assert r.code == 0 and "skipped 3 unreadable" in r.stderr, r
        labels = artifacts.read_labels(out)
        assert len(labels) == 6 and {k.decode() for k in labels.keys} == {
            "plain.jpg", "cmyk.jpg", "rotated.jpg", "deep.png", "alpha.png", "anim.gif"}
        shard = artifacts.read_header(next(out.glob("shard-*"))).meta
        listed = set(shard.get("skipped_files", [])) | set(shard["data"].get("skipped_files", []))
        assert listed == bad, shard


def test_tar_shards_read_completely_under_ranks_and_workers(photos, tmp_path):
    root, teacher = photos
    r = dpl("pack", root / "unlabeled", "--shard-size", "70", "-o", tmp_path / "shards")
    assert r.code == 0, r
    assert len(list((tmp_path / "shards").glob("*.tar"))) == 5
    spec = f"tar:{tmp_path / 'shards'}"
    assert dpl("label", teacher, "--data", spec, "--stream", "--workers", "0", *CPU, "-o", tmp_path / "one").code == 0
    for i in range(2):      # two ranks' jobs, two decoding workers each
        r = dpl("label", teacher, "--data", spec, "--stream", "--workers", "2", "--batch-size", "32", "--shard", f"{i}/2",
                *CPU, "-o", tmp_path / "two")
        assert r.code == 0, r
    one, two = read_by_key(tmp_path / "one"), read_by_key(tmp_path / "two")
    assert len(one) == 300 and one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    folder = read_by_key(tmp_path / "folder") if dpl(
        "label", teacher, "--data", f"imagefolder:{root / 'unlabeled'}", *CPU, "-o", tmp_path / "folder").code == 0 else {}
    assert {images.shard_key(k): v for k, v in folder.items()}.keys() == one.keys()
    assert all(torch.equal(folder[k], one[images.shard_key(k)]) for k in folder)      # same bytes, same labels


def test_labeled_tar_shards_train(photos, tmp_path):
    root, _ = photos
    assert dpl("pack", root / "labeled", "--shard-size", "40", "-o", tmp_path / "shards").code == 0
    assert (tmp_path / "shards" / "classes.txt").read_text().split() == [f"class{c}" for c in range(10)]
    r = dpl("teach", "--data", f"tar:{tmp_path / 'shards'}", "--resize", "16", "--arch", "cnn-s", "--epochs", "1",
            "--stream", *CPU, "-o", tmp_path / "t.safetensors")
    assert r.code == 0 and "streamed" in r.stderr, r
    meta = artifacts.read_header(tmp_path / "t.safetensors").meta
    assert meta["classes"][3] == "class3" and meta["data"]["n"] == 100


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_bad_sources_are_refused_in_one_line(photos, tmp_path):
    root, teacher = photos
    shards = tmp_path / "shards"
    shards.mkdir()
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, "PNG")
    _tar(shards / "a.tar", [("k1.png", png.getvalue()), ("k1.cls", b"0"), ("k2.cls", b"1")])
    out = tmp_path / "t.safetensors"
    assert_refused(dpl("teach", "--data", f"tar:{shards}", "-o", out), "'k2'", "no image")
    assert_refused(dpl("teach", "--data", f"imagefolder:{root / 'labeled' / 'class0' / '00000.jpg'}", "-o", out),
                   "a file, not a folder")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert_refused(dpl("teach", "--data", f"imagefolder:{tmp_path / 'loop'}", "-o", out), "symlink loop")
    gap = write_photos(tmp_path / "gap", per_class=2, classes=3)
    (gap / "class9").mkdir()
    assert_refused(dpl("teach", "--data", f"imagefolder:{gap}", "-o", out), "'class9'", "no image files")
    assert_refused(dpl("teach", "--data", f"imagefolder:{root / 'labeled'}", "--resize", "100000", "-o", out),
                   "--resize must be between 1 and 2048")
    r = dpl("teach", "--data", f"imagefolder:{root / 'labeled'}", "--resize", "0", "-o", out)
    assert r.code == 2 and "--resize" in r.stderr
    assert not out.exists()
    loose = write_photos(tmp_path / "loose", per_class=3, classes=2)
    Image.new("RGB", (20, 20)).save(loose / "stray.jpg")
    r = dpl("teach", "--data", f"imagefolder:{loose}", "--arch", "cnn-s", "--epochs", "1", *CPU, "-o", out)
    assert r.code == 0 and "ignored 1 image files directly in" in r.stderr, r


def test_own_images_recipe_runs_small(tmp_path):
    recipe = Path(__file__).parents[1] / "recipes" / "own-images"
    args = ["make", "-C", str(recipe), f"OUT={tmp_path}/own", "SOURCE=digits", "LABELED=5", "POOL=150", "TEST=4",
            "SIZE=12", "ARCH=cnn-s", "TEACHER_EPOCHS=3", "EPOCHS=1", "DEVICE=cpu"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=WIDE)
    assert r.returncode == 0, r.stderr
    summary = (tmp_path / "own" / "summary.txt").read_text()
    assert "student.safetensors" in summary and "top1" in summary
    labels = artifacts.read_labels(tmp_path / "own" / "labels")
    assert len(labels) == 150 and labels.meta["data"]["spec"].endswith("photos/unlabeled:train")

