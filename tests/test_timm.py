"""`--arch timm:NAME`: timm's models in the registry, rebuilt from a checkpoint alone, timm's weights from a Hugging
Face cache (`--pretrained`), refusals in one line, and no timm imported until a timm: architecture is asked for."""

import importlib.util
import json
import socket
import subprocess
import sys

import pytest
import torch

from conftest import assert_refused, dpl, listing, write_imagefolder
from dpl.core import DplError, artifacts, catalog, models

pytestmark = pytest.mark.usefixtures("one_thread")
needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
FAST = ["--epochs", "1", "--batch-size", "8", "--device", "cpu"]
TEACHER, STUDENT = "timm:resnet10t", "timm:mobilenetv3_small_050"


def build(arch, in_channels=1, image_size=8, num_classes=10, **kw):
    return models.build(models.arch_spec(arch, num_classes=num_classes, in_channels=in_channels,
                                         image_size=image_size, **kw))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """18 gray 12x12 images of 3 classes (train and test): a pipeline in seconds."""
    return write_imagefolder(tmp_path_factory.mktemp("timm") / "images")


@pytest.fixture(scope="module")
def timm_teacher(images):
    out = images.parent / "t.safetensors"
    r = dpl("teach", "--data", f"imagefolder:{images}", "--arch", TEACHER, *FAST, "-o", out)
    assert r.code == 0, r
    return out


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache, and no downloads."""
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def cache_timm_weights(cache, name: str, seed: int = 0) -> dict:
    """A seeded timm `name` (1000 classes, RGB) as the model.safetensors of its hf_hub_id, in the cache's layout."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(state, folder / "snapshots" / ("0" * 40) / "model.safetensors")
    return state


@needs_timm
def test_teach_label_distill_eval_through_timm_models(images, timm_teacher, tmp_path):
    teacher = artifacts.load_checkpoint(timm_teacher)
    assert teacher.arch["name"] == TEACHER and teacher.arch["in_channels"] == 1 and teacher.arch["image_size"] == 12
    labels, out = tmp_path / "labels", tmp_path / "s.safetensors"
    assert dpl("label", timm_teacher, "--device", "cpu", "-o", labels).code == 0
    r = dpl("distill", "--labels", labels, "--arch", STUDENT, *FAST, "-o", out)
    assert r.code == 0, r
    r = dpl("eval", out, "--json", "--device", "cpu")
    assert r.code == 0, r
    assert json.loads(r.stdout)["arch"] == STUDENT
    ckpt = artifacts.load_checkpoint(out)
    assert ckpt.arch["name"] == STUDENT
    rebuilt = ckpt.build_model()        # from the metadata alone
    assert type(rebuilt).__name__ == "MobileNetV3"
    assert all(torch.equal(v, ckpt.model_state()[k]) for k, v in rebuilt.state_dict().items())
    pytest.importorskip("onnxruntime")
    r = dpl("export", out, "-o", tmp_path / "s.onnx", "--json")         # and shipped, checked in onnxruntime
    assert r.code == 0, r
    assert json.loads(r.stdout)["parity"]["top1_agreement"] == 1.0


@needs_timm
def test_online_kd_from_a_timm_teacher_into_a_timm_student(timm_teacher, tmp_path):
    out = tmp_path / "kd.safetensors"
    r = dpl("distill", "--teacher", timm_teacher, "--arch", STUDENT, *FAST, "-o", out)
    assert r.code == 0, r
    ckpt = artifacts.load_checkpoint(out)
    assert ckpt.arch["name"] == STUDENT and ckpt.meta["parents"][0]["role"] == "teacher"


@needs_timm
def test_dropout_and_stochastic_depth_reach_timm(images, tmp_path):
    out = tmp_path / "m.safetensors"
    r = dpl("teach", "--data", f"imagefolder:{images}", "--arch", TEACHER, "--dropout", "0.2",
            "--stochastic-depth", "0.1", *FAST, "-o", out)
    assert r.code == 0, r
    model = artifacts.load_checkpoint(out).build_model()
    assert model.drop_rate == 0.2
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates == sorted(rates) and rates[0] < 0.1 and rates[-1] == pytest.approx(0.1)    # timm's: linear
    assert not any(type(m).__name__ == "DropPath" for m in build(TEACHER).modules())   # 0: none


@needs_timm
def test_names_parse_with_the_prefix_and_knobs():
    assert models.parse_arch("timm:resnet18") == ("timm:resnet18", {})
    assert models.parse_arch("timm:vit_tiny_patch16_224:patch_size=4") == ("timm:vit_tiny_patch16_224", {"patch_size": 4})
    assert models.arch_spec("timm:resnet18.a1_in1k", num_classes=3, in_channels=1, image_size=8)["name"] == "timm:resnet18.a1_in1k"
    assert catalog.TIMM == models.TIMM


@needs_timm
@pytest.mark.parametrize("arch, size, head", [("timm:resnet18", 8, "fc"), (STUDENT, 8, "classifier"),
                                               ("timm:convnext_atto", 32, "head.fc"),
                                               ("timm:vit_tiny_patch16_224", 32, "head"),
                                               ("timm:vit_tiny_patch16_224:patch_size=4", 8, "head")])
def test_small_images_run_and_features_are_the_classifiers_input(arch, size, head):
    model = build(arch, image_size=size).eval()
    assert models.feature_layer(model) == head
    x = torch.zeros(2, 1, size, size)
    with models.Taps(model, [models.FEATURES]) as taps:
        features = taps.tensor(x, models.FEATURES)
    assert features.shape == (2, model.get_submodule(head).in_features)
    assert model(x).shape == (2, 10)


@needs_timm
def test_a_size_the_model_cannot_take_is_refused_naming_it():
    with pytest.raises(DplError, match=r"timm:convnext_atto cannot take 1x8x8 images"):
        build("timm:convnext_atto", image_size=8)
    with pytest.raises(DplError, match=r"timm:vit_tiny_patch16_224 cannot take 1x8x8 images"):
        build("timm:vit_tiny_patch16_224", image_size=8)
    with pytest.raises(DplError, match=r"timm:vgg11 has no drop_path_rate: give --stochastic-depth 0"):
        build("timm:vgg11", in_channels=3, image_size=32, stochastic_depth=0.1)
    with pytest.raises(DplError, match="pretrained cannot be set"):
        build("timm:resnet18:pretrained=1")


@needs_timm
@pytest.mark.parametrize("arch, suggested", [("timm:resnet19", "timm:resnet18"),
                                             ("timm:resnet18.a9_in1k", "timm:resnet18.a1_in1k"),
                                             ("timm:hf-hub:timm/resnet18", None)])
def test_an_unknown_timm_name_is_refused_with_suggestions(tmp_path, arch, suggested):
    before = listing(tmp_path)
    r = dpl("teach", "--data", "digits", "--arch", arch, "--epochs", "1", "-o", tmp_path / "x.safetensors")
    assert_refused(r, "unknown timm architecture", *([suggested] if suggested else []))
    assert listing(tmp_path) == before


@needs_timm
def test_info_lists_timm_layers_and_the_family(tmp_path):
    r = dpl("info", "--layers", "timm:resnet18", "--data", "digits", "--json")
    assert r.code == 0, r
    rows = {row["path"]: row for row in json.loads(r.stdout)["layers"]}
    assert rows["conv1"]["type"] == "Conv2d" and rows["fc"]["shape"] == [10] and rows["layer4.1"]["shape"][0] == 512
    r = dpl("info", "--archs", "--json")
    listed = json.loads(r.stdout)
    assert listed["archs"][-1] == "timm:NAME" and listed["timm_models"] > 1000
    from dpl.cli.common import complete_arch

    assert "timm:" in complete_arch("ti") and complete_arch("wrn-4") == ["wrn-40-1", "wrn-40-2", "wrn-40-4", "wrn-40-10"]
    assert "timm:resnet18" in complete_arch("timm:resnet1") and all(a.startswith("timm:resnet1") for a in complete_arch("timm:resnet1"))


# ---- --pretrained ---------------------------------------------------------------------------------------

@needs_timm
def test_pretrained_loads_the_cached_safetensors_where_shapes_fit(hf_cache, tmp_path):
    saved = cache_timm_weights(hf_cache, "mobilenetv3_small_050")
    out = tmp_path / "m.safetensors"
    r = dpl("teach", "--data", "digits", "--labeled-per-class", "1", "--arch", STUDENT, "--pretrained", "--lr", "1e-30",
            *FAST, "-o", out)
    assert r.code == 0, r
    ckpt = artifacts.load_checkpoint(out)
    file = next(hf_cache.rglob("model.safetensors"))
    assert ckpt.meta["parents"] == [{"role": "pretrained", "path": "https://huggingface.co/timm/mobilenetv3_small_050.lamb_in1k",
                                     "sha256": artifacts.sha256_file(file)}]
    state = ckpt.model_state()
    for key in ("blocks.2.0.conv_pw.weight", "conv_head.weight", "blocks.2.0.se.conv_reduce.weight"):
        assert torch.equal(state[key], saved[key]), key
    assert torch.allclose(state["conv_stem.weight"], saved["conv_stem.weight"].sum(1, keepdim=True))  # RGB -> gray

    model = build(STUDENT)          # the report: the classifier for 10 classes, not 1000, starts fresh
    result = models.load_pretrained(model, STUDENT)
    assert result.file == file and set(result.fresh) == {"classifier.weight", "classifier.bias"}
    assert set(result.loaded) | set(result.fresh) == set(model.state_dict())


@needs_timm
def test_pretrained_vit_gets_its_position_embedding_resampled(hf_cache):
    saved = cache_timm_weights(hf_cache, "vit_tiny_patch16_224")
    model = build("timm:vit_tiny_patch16_224", in_channels=3, image_size=32)
    result = models.load_pretrained(model, "timm:vit_tiny_patch16_224")
    assert "pos_embed" in result.loaded and model.pos_embed.shape == (1, 5, 192)     # 197 tokens -> 1 + 2x2
    assert torch.equal(model.pos_embed[0, 0], saved["pos_embed"][0, 0])             # the class token's, kept
    assert set(result.fresh) == {"head.weight", "head.bias"}


@needs_timm
@pytest.mark.parametrize("offline", [True, False])
def test_pretrained_without_cached_weights_or_network_names_where_it_looked(hf_cache, tmp_path, monkeypatch, offline):
    if not offline:         # no network: the host name does not resolve
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(socket.gaierror(-2, "no network")))
    before = listing(tmp_path)
    r = dpl("teach", "--data", "digits", "--arch", STUDENT, "--pretrained", "--epochs", "1", "-o", tmp_path / "m.safetensors")
    assert_refused(r, "model.safetensors", "timm/mobilenetv3_small_050.lamb_in1k", str(hf_cache),
                   "HF_HUB_OFFLINE" if offline else "no network")
    assert listing(tmp_path) == before


# ---- without timm ---------------------------------------------------------------------------------------

def test_without_timm_a_timm_arch_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)         # `import timm` raises ImportError
    with pytest.raises(DplError, match=r"pip install 'dpl\[timm\]'"):
        build("timm:resnet18")
    with pytest.raises(DplError, match=r"pip install 'dpl\[timm\]'"):
        models.build({"name": "timm:resnet18", "num_classes": 10, "in_channels": 1, "image_size": 8,
                      "dropout": 0.0, "stochastic_depth": 0.0})
    assert models.timm_model_count() is None


def test_the_registry_does_not_import_timm():
    code = "import sys, dpl.core.models, dpl.core.artifacts; print('timm' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
