import pytest
import torch

from dpl.core import DplError, models

SMALL = [n for n in models.REGISTRY if not n.startswith(("resnet101", "wide_resnet", "resnext", "efficientnet_b2", "wrn-28", "wrn-40-10", "resnet110"))
         and not models.is_detector(n)]     # detectors: tests/test_detect.py


@pytest.mark.parametrize("name", SMALL)
def test_every_architecture_builds_for_grey_8px_and_colour_32px(name):
    for channels, size in ((1, 8), (3, 32)):
        model = models.build(models.arch_spec(name, num_classes=7, in_channels=channels, image_size=size))
        model.eval()
        assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_small_cnns_have_clearly_different_sizes():
    sizes = [models.count_params(models.build(models.arch_spec(n, num_classes=10, in_channels=1, image_size=28)))
             for n in ("cnn-s", "cnn-m", "cnn-l")]
    assert sizes[0] * 3 < sizes[1] and sizes[1] * 3 < sizes[2]


@pytest.mark.parametrize("name", ["cnn-m", "resnet20", "wrn-16-2", "resnet18", "efficientnet_b0"])
def test_stochastic_depth_and_dropout_make_training_noisy_but_eval_deterministic(name):
    torch.manual_seed(0)
    spec = models.arch_spec(name, num_classes=10, in_channels=1, image_size=16, dropout=0.5, stochastic_depth=0.5)
    model = models.build(spec)
    x = torch.randn(4, 1, 16, 16)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    plain = models.build({**spec, "dropout": 0.0, "stochastic_depth": 0.0})
    assert plain.state_dict().keys() == model.state_dict().keys()   # the knobs add no weights


def test_stochastic_depth_rises_linearly_to_the_last_block():
    model = models.build(models.arch_spec("resnet20", num_classes=10, in_channels=1, image_size=8, stochastic_depth=0.3))
    rates = [m.p for m in model.modules() if type(m).__name__ == "StochasticDepth"]
    assert len(rates) == 9 and rates[-1] == pytest.approx(0.3) and rates[0] == pytest.approx(0.3 / 9)
    assert all(a < b for a, b in zip(rates, rates[1:]))


def test_mobilenet_refuses_stochastic_depth():
    with pytest.raises(DplError, match="stochastic depth"):
        models.build(models.arch_spec("mobilenet_v3_small", num_classes=10, in_channels=1, image_size=8, stochastic_depth=0.1))


def test_unknown_arch_lists_the_valid_names():
    with pytest.raises(DplError, match="unknown architecture 'cnn-xl'.*cnn-s.*resnet8x4.*wrn-40-2.*resnet18"):
        models.arch_spec("cnn-xl", num_classes=10, in_channels=1, image_size=8)


def test_layers_by_module_path_with_shapes():
    model = models.build(models.arch_spec("cnn-m", num_classes=10, in_channels=1, image_size=28))
    rows = {r["path"]: r for r in models.list_layers(model, (1, 28, 28))}
    assert rows["stem"]["shape"] == [32, 14, 14]
    assert rows["stages.1"]["shape"] == [64, 7, 7]
    assert rows["head.fc"]["shape"] == [10]
    assert models.feature_layer(model) == "head.fc"
    assert isinstance(models.get_layer(model, "stages.2.0.conv1"), torch.nn.Conv2d)
    with pytest.raises(DplError, match="no layer 'stages.9'.*stem"):
        models.get_layer(model, "stages.9")


def test_fitnet_thin_depth_width_and_the_paper_s_no_batch_norm_variant():
    def build(spec):
        return models.build(models.arch_spec(spec, num_classes=10, in_channels=1, image_size=28))
    plain = build("fitnet-thin:depth=19,width=8,bn=0")
    convs = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19 and all(c.bias is not None for c in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    normed = build("fitnet-thin:depth=19,width=8")
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in normed.modules()) == 19
    assert [c.out_channels for c in convs] == [8] * 7 + [16] * 12       # stages of 7, 6, 6 layers
    with pytest.raises(DplError, match="bn=0 or bn=1"):
        build("fitnet-thin:bn=2")
