import json

import pytest
import torch

from conftest import assert_refused, cache_imagenet_weights, dpl
from dpl.core import DplError, artifacts, models


def build(name, in_channels=1, image_size=8, num_classes=10):
    return models.build(models.arch_spec(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size))


@pytest.mark.parametrize("in_channels", [1, 2, 3, 4])
def test_mobilenet_keeps_the_body_adapts_the_input_conv_and_starts_the_classifier_fresh(hub, in_channels):
    saved = cache_imagenet_weights("mobilenet_v3_small")
    model = build("mobilenet_v3_small", in_channels=in_channels)
    fresh_fc = model.classifier[3].weight.detach().clone()
    result = models.load_pretrained(model, "mobilenet_v3_small")
    state = model.state_dict()
    assert result.file == hub / "mobilenet_v3_small-047dcff4.pth" and result.url.endswith(result.file.name)
    assert set(result.loaded) | set(result.fresh) == set(state) and not set(result.loaded) & set(result.fresh)
    for key in result.loaded:
        if key != "features.0.0.weight":
            assert torch.equal(state[key], saved[key]), key
    assert "features.1.block.0.0.weight" in result.loaded and "classifier.0.weight" in result.loaded
    assert {"classifier.3.weight", "classifier.3.bias"} <= set(result.fresh)     # 10 classes, not 1000
    assert torch.equal(state["classifier.3.weight"], fresh_fc)
    rgb = saved["features.0.0.weight"]
    expected = {1: rgb.sum(1, keepdim=True), 2: rgb[:, :2] * 1.5, 3: rgb,
                4: torch.cat([rgb, rgb[:, :1]], 1) * 0.75}[in_channels]
    assert "features.0.0.weight" in result.loaded
    assert torch.allclose(state["features.0.0.weight"], expected)


def test_resnet_small_stem_starts_fresh_and_imagenet_shapes_load_everything(hub):
    saved = cache_imagenet_weights("resnet18")
    small = build("resnet18", image_size=8)
    result = models.load_pretrained(small, "resnet18")
    assert "conv1.weight" in result.fresh and "fc.fc.weight" in result.fresh     # 3x3 stem; 10 classes
    assert "bn1.weight" in result.loaded and "layer4.1.conv2.weight" in result.loaded
    assert torch.equal(small.state_dict()["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])

    full = build("resnet18", in_channels=3, image_size=224, num_classes=1000)
    result = models.load_pretrained(full, "resnet18")
    assert result.fresh == []
    assert torch.equal(full.state_dict()["fc.fc.weight"], saved["fc.weight"])
    assert torch.equal(full.state_dict()["conv1.weight"], saved["conv1.weight"])


def test_teach_pretrained_records_the_weights_and_a_rebuild_loads_none(tmp_path, hub):
    saved = cache_imagenet_weights("mobilenet_v3_small")
    out = tmp_path / "m.safetensors"
    r = dpl("teach", "--arch", "mobilenet_v3_small", "--pretrained", "--labeled-per-class", "5", "--epochs", "1",
            "--lr", "1e-30", "--device", "cpu", "-o", out)
    assert r.code == 0, r
    assert r.stdout.strip() == str(out)
    file = hub / "mobilenet_v3_small-047dcff4.pth"
    ckpt = artifacts.load_checkpoint(out)
    url, _ = models.pretrained_file("mobilenet_v3_small")
    assert ckpt.meta["parents"] == [{"role": "pretrained", "path": url, "sha256": artifacts.sha256_file(file)}]
    assert "pretrained" not in ckpt.arch
    state = ckpt.model_state()
    assert torch.equal(state["features.3.block.1.0.weight"], saved["features.3.block.1.0.weight"])   # lr ~ 0
    file.unlink()       # without the cache (and the network), the checkpoint still rebuilds: from itself alone
    rebuilt = ckpt.build_model().state_dict()
    assert torch.equal(rebuilt["features.3.block.1.0.weight"], saved["features.3.block.1.0.weight"])
    assert dpl("eval", out, "--device", "cpu").code == 0


def test_distill_takes_pretrained(tmp_path, hub, teacher):
    cache_imagenet_weights("mobilenet_v3_small")
    out = tmp_path / "s.safetensors"
    r = dpl("distill", "--teacher", teacher, "--arch", "mobilenet_v3_small", "--pretrained", "--labeled-per-class", "5",
            "--epochs", "1", "--device", "cpu", "-o", out)
    assert r.code == 0, r
    roles = [p["role"] for p in json.loads(dpl("info", out, "--json").stdout)["parents"]]
    assert roles == ["pretrained", "teacher"]


def test_missing_weights_without_network_name_the_cache_file(tmp_path, hub):
    r = dpl("teach", "--arch", "mobilenet_v3_small", "--pretrained", "--epochs", "1", "--device", "cpu",
            "-o", tmp_path / "m.safetensors")
    assert_refused(r, "cannot download", "mobilenet_v3_small-047dcff4.pth", str(hub / "mobilenet_v3_small-047dcff4.pth"))
    assert not (tmp_path / "m.safetensors").exists() and list(hub.iterdir()) == []


class Payload:
    pass


def test_unreadable_cache_file_is_refused_without_unpickling(tmp_path, hub):
    _, file = models.pretrained_file("resnet18")
    file.parent.mkdir(parents=True)
    torch.save({"conv1.weight": Payload()}, file)       # an arbitrary object: weights_only refuses it
    with pytest.raises(DplError, match="unreadable weights"):
        models.load_pretrained(build("resnet18"), "resnet18")


def test_pretrained_refused_for_other_archs_and_with_init(tmp_path, hub):
    assert_refused(dpl("teach", "--arch", "cnn-m", "--pretrained", "-o", tmp_path / "a.safetensors"),
                   "cnn-m", "resnet18", "efficientnet_b2")
    assert_refused(dpl("teach", "--arch", "resnet18", "--pretrained", "--init", tmp_path / "x.safetensors",
                       "-o", tmp_path / "b.safetensors"), "--pretrained", "--init")
