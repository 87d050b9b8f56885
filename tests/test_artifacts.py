import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from dpl.core import DplError, artifacts, models


def make_checkpoint(path, arch="cnn-s"):
    spec = models.arch_spec(arch, num_classes=10, in_channels=1, image_size=8)
    model = models.build(spec)
    meta = {"arch": spec, "num_classes": 10, "classes": [str(i) for i in range(10)],
            "input": artifacts.input_meta(1, 8, [0.3], [0.4]), "parents": [], "metrics": {"test_top1": 0.5}}
    artifacts.save_checkpoint(path, model, meta)
    return model


def test_round_trip_gives_identical_logits(tmp_path):
    path = tmp_path / "m.safetensors"
    model = make_checkpoint(path, "resnet20")
    loaded = artifacts.load_checkpoint(path)
    rebuilt = loaded.build_model()
    x = torch.randn(5, 1, 8, 8)
    model.eval(), rebuilt.eval()
    assert torch.equal(model(x), rebuilt(x))
    assert loaded.meta["dpl.kind"] == "checkpoint" and loaded.meta["arch"]["name"] == "resnet20"
    assert loaded.meta["metrics"] == {"test_top1": 0.5}
    assert list(tmp_path.iterdir()) == [path]       # no temporary file left behind


def test_metadata_is_strings_only_and_json_where_structured(tmp_path):
    path = tmp_path / "m.safetensors"
    make_checkpoint(path)
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    stored = json.loads(path.read_bytes()[8: 8 + n])["__metadata__"]
    assert stored["dpl.kind"] == "checkpoint" and stored["dpl.format"] == "1"
    assert json.loads(stored["arch"])["name"] == "cnn-s"
    assert all(isinstance(v, str) for v in stored.values())


def corrupt_files(tmp_path):
    good = tmp_path / "good.safetensors"
    make_checkpoint(good)
    raw = good.read_bytes()
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    cases = {
        "truncated": raw[: len(raw) // 2],
        "random": bytes(range(256)) * 8,
        "empty": b"",
        "pickle": pickle.dumps({"weights": [1, 2, 3]}),
        "huge-header": struct.pack("<Q", 1 << 60) + b"{}",
        "not-json": struct.pack("<Q", 4) + b"abcd",
        "label-kind": raw.replace(b'"dpl.kind":"checkpoint"', b'"dpl.kind":"labels    "'),
        "future-format": raw.replace(b'"dpl.format":"1"', b'"dpl.format":"9"'),
    }
    paths = {"foreign": foreign}
    for name, content in cases.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        paths[name].write_bytes(content)
    return paths


@pytest.mark.parametrize("case", ["truncated", "random", "empty", "pickle", "huge-header", "not-json",
                                  "foreign", "label-kind", "future-format"])
def test_bad_files_are_refused_with_the_file_named(tmp_path, case):
    path = corrupt_files(tmp_path)[case]
    with pytest.raises(DplError) as err:
        artifacts.load_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DplError, match="no such file"):
        artifacts.load_checkpoint(tmp_path / "absent.safetensors")


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    make_checkpoint(path, "cnn-s")
    model = models.build(models.arch_spec("cnn-m", num_classes=10, in_channels=1, image_size=8))
    with pytest.raises(DplError, match="do not fit the architecture"):
        artifacts.load_state(model, artifacts.load_checkpoint(path).model_state(), path)


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.safetensors"

    def explode(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        artifacts.atomic_write(target, explode)
    assert list(tmp_path.iterdir()) == []
