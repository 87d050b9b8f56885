"""dpl export (ONNX checked in onnxruntime, TorchScript) and dpl predict (checkpoints and ONNX models, on image
folders with odd files), through the CLI."""

import csv
import json

import numpy as np
import pytest
import torch

from conftest import assert_refused, dpl
from dpl.core import artifacts, data, deploy

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_onnx_export_computes_the_checkpoint_with_normalisation_folded_in(teacher, tmp_path):
    out = tmp_path / "t.onnx"
    r = dpl("export", teacher, "-o", out, "--json")
    assert r.code == 0, r
    result = json.loads(r.stdout)
    assert result["exporter"] in ("dynamo", "torchscript") and result["opset"] == deploy.OPSET
    parity = result["parity"]
    assert parity["within_tolerance"] and parity["top1_agreement"] == 1.0
    assert parity["images"] == len(data.load("digits:test")) and parity["top1_export"] == parity["top1_checkpoint"]
    # raw pixels / 255 in, any batch size: the export normalises itself
    info = deploy.onnx_info(out)
    assert info["classes"] == [str(c) for c in range(10)] and info["input"]["normalization"] == "folded in"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images" and isinstance(session.get_inputs()[0].shape[0], str)
    ckpt = artifacts.load_checkpoint(teacher)
    images = data.load("digits:test").images[:3]
    model = ckpt.build_model().eval()
    with torch.inference_mode():
        expected = model((images.float() / 255 - torch.tensor(ckpt.input["mean"]).view(1, -1, 1, 1))
                         / torch.tensor(ckpt.input["std"]).view(1, -1, 1, 1)).numpy()
    for batch in (images[:1], images):
        got = session.run(None, {"images": (batch.float() / 255).numpy()})[0]
        np.testing.assert_allclose(got, expected[: len(batch)], atol=1e-4, rtol=1e-4)


def test_torchscript_export_of_a_cifar_resnet_and_int8_onnx_with_its_accuracy_change(tmp_path):
    ckpt = tmp_path / "r8.safetensors"
    assert dpl("teach", "--arch", "resnet8", "--epochs", "1", "--device", "cpu", "-o", ckpt).code == 0
    r = dpl("export", ckpt, "-o", tmp_path / "r8.pt", "--format", "torchscript")
    assert r.code == 0, r
    assert "torchscript (trace exporter" in r.stderr and "top-1 agreement 1.0000" in r.stderr
    exported = deploy.load_torchscript(tmp_path / "r8.pt")
    assert exported.info["arch"] == "resnet8" and exported.info["format"] == "torchscript"
    r = dpl("export", ckpt, "-o", tmp_path / "r8-int8.onnx", "--int8", "--json")
    assert r.code == 0, r
    result = json.loads(r.stdout)
    assert result["precision"] == "int8-dynamic" and deploy.onnx_info(tmp_path / "r8-int8.onnx")["precision"] == \
        "int8-dynamic"
    q = result["int8"]
    assert 0 <= q["top1_agreement"] <= 1 and q["top1_export"] is not None and q["max_abs_diff"] > 0
    r = dpl("export", ckpt, "-o", tmp_path / "r8-int8b.onnx", "--int8")
    assert "int8 dynamic quantisation: top-1 agreement" in r.stderr and "points)" in r.stderr


def test_an_export_that_computes_something_else_is_refused_and_nothing_is_written(teacher, tmp_path, monkeypatch):
    forward = deploy.Normalized.forward
    monkeypatch.setattr(deploy.Normalized, "forward", lambda self, x: forward(self, x) * 1.01 + 0.05)
    r = dpl("export", teacher, "-o", tmp_path / "t.onnx")
    assert_refused(r, "does not compute what", "max |logit difference|", "nothing written")
    assert list(tmp_path.iterdir()) == []


def _photos(root, teacher_data):
    """8x8 grey PNGs of digits in class folders, plus a corrupt PNG and a stray text file."""
    from PIL import Image

    for i in range(12):
        label = int(teacher_data.labels[i])
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(teacher_data.images[i, 0].numpy()).save(folder / f"{i:02d}.png")
    (root / str(int(teacher_data.labels[0])) / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but no image")
    (root / "notes.txt").write_text("not an image")
    return root


def test_predict_with_a_checkpoint_and_its_onnx_export_on_a_folder_with_odd_files(teacher, tmp_path):
    photos = _photos(tmp_path / "photos", data.load("digits:test"))
    onnx_file = tmp_path / "t.onnx"
    assert dpl("export", teacher, "-o", onnx_file).code == 0
    rows = {}
    for model, out in ((teacher, tmp_path / "ckpt.csv"), (onnx_file, tmp_path / "onnx.csv")):
        r = dpl("predict", model, "--data", f"imagefolder:{photos}", "-o", out, "--topk", "3")
        assert r.code == 0, r
        assert "skipped 1 unreadable images" in r.stderr and "broken.png" in r.stderr and "images/s" in r.stderr
        with out.open() as f:
            rows[model] = list(csv.DictReader(f))
        assert len(rows[model]) == 12
        first = rows[model][0]
        assert set(first) == {"file", "class", "prob", "class_2", "prob_2", "class_3", "prob_3", "true"}
        assert float(first["prob"]) >= float(first["prob_2"]) >= float(first["prob_3"])
        assert all(row["file"].endswith(".png") and row["true"] == row["file"].split("/")[0] for row in rows[model])
    assert [r["class"] for r in rows[teacher]] == [r["class"] for r in rows[onnx_file]]
    np.testing.assert_allclose([float(r["prob"]) for r in rows[teacher]], [float(r["prob"]) for r in rows[onnx_file]],
                               atol=1e-4)
    shards = tmp_path / "shards"                       # the same photos as tar shards, streamed alike
    assert dpl("pack", photos, "-o", shards, "--shard-size", "5").code == 0
    r = dpl("predict", onnx_file, "--data", f"tar:{shards}", "-o", tmp_path / "tar.csv", "--topk", "3")
    assert r.code == 0, r
    with (tmp_path / "tar.csv").open() as f:
        assert sorted(r["class"] for r in csv.DictReader(f)) == sorted(r["class"] for r in rows[onnx_file])
    r = dpl("predict", onnx_file, "--data", "digits:test", "-o", tmp_path / "p.jsonl", "--json")
    assert r.code == 0, r
    result = json.loads(r.stdout)
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert result["images"] == len(lines) == len(data.load("digits:test")) and result["runtime"] == "onnxruntime"
    assert lines[0]["file"] == "0" and len(lines[0]["top"]) == 1 and "true" in lines[0]
    assert result["top1"] == pytest.approx(np.mean([line["top"][0]["class"] == line["true"] for line in lines]))
