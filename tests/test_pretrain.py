import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_refused, dpl, write_imagefolder
from dpl.core import artifacts, data, models
from dpl.core.methods import pretext
from dpl.core.methods.common import ModelOptions, make_model

SMALL = ("--arch", "cnn-s", "--batch-size", "64", "--device", "cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def info(path) -> dict:
    r = dpl("info", path, "--json")
    assert r.code == 0, r
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def rotation_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "rotation.safetensors"
    r = dpl("pretrain", "--task", "rotation", "--epochs", "2", *SMALL, "-o", out)
    assert r.code == 0, r
    return out


# digits are 8x8: jigsaw and context need the grid's minimum, 24x24.
TASK_ARGS = {
    "rotation": (),
    "simclr": ("--temperature", "0.5"),
    "jigsaw": ("--resize", "24", "--permutations", "10", "--patch-size", "12"),
    "context": ("--resize", "24", "--patch-size", "12"),
}


@pytest.mark.parametrize("task", list(TASK_ARGS))
def test_each_task_loss_falls_and_the_checkpoint_holds_the_model_as_teach_makes_it(tmp_path, task):
    out = tmp_path / f"{task}.safetensors"
    r = dpl("pretrain", "--task", task, "--epochs", "3", "--labeled-per-class", "40", "--part", "labeled",
            *TASK_ARGS[task], *SMALL, "-o", out)
    assert r.code == 0, r
    assert r.stdout.strip() == str(out)
    meta = info(out)
    losses = [h["loss"] for h in meta["history"]]
    assert len(losses) == 3 and losses[0] - losses[-1] > 0.25, losses     # nats; each run drops 0.45 or more
    size = 24 if "--resize" in TASK_ARGS[task] else 8
    assert meta["input"]["size"] == size and meta["pretext"]["task"] == task
    assert meta["arch"] == models.arch_spec("cnn-s", num_classes=10, in_channels=1, image_size=size)
    tensors = load_file(str(out))
    own = set(models.build(meta["arch"]).state_dict())
    assert {k for k in tensors if not k.startswith("objective.")} == own
    assert any(k.startswith("objective.head.") for k in tensors)


def test_jigsaw_permutations_have_the_claimed_minimum_hamming_distance_and_are_reproducible(tmp_path):
    stored = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        r = dpl("pretrain", "--task", "jigsaw", "--epochs", "0", "--resize", "24", *SMALL, "-o", out)
        assert r.code == 0, r
        stored.append((load_file(str(out))["objective.permutations"], info(out)["pretext"]))
    (perms, claim), (again, _) = stored
    assert torch.equal(perms, again)
    assert perms.shape == (100, 9) and claim["permutations"] == 100
    assert torch.equal(perms.sort(1).values, torch.arange(9).expand(100, 9))      # each row a permutation
    assert len({tuple(p) for p in perms.tolist()}) == 100
    pairwise = (perms[:, None] != perms[None]).sum(-1) + 10 * torch.eye(100, dtype=torch.long)
    assert int(pairwise.min()) == claim["min_hamming"] >= 6
    assert not torch.equal(pretext.maximal_hamming_permutations(100, seed=1), perms)


def test_grid_tiles_and_simclr_views_are_per_sample_and_exact():
    x = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    top, left = torch.tensor([[0, 5], [2, 3], [7, 0], [1, 1]]), torch.tensor([[4, 0], [6, 1], [0, 9], [2, 2]])
    patches = pretext.crop_patches(x, top, left, 6)
    assert patches.shape == (4, 2, 3, 6, 6)
    assert torch.equal(patches[2, 1], x[2, :, 0:6, 9:15]) and torch.equal(patches[1, 0], x[1, :, 2:8, 6:12])
    views = pretext.Views(blur_prob=1.0)
    a, b = pretext.simclr_view(x, views, True), pretext.simclr_view(x, views, True)
    assert a.shape == x.shape and a.dtype == torch.uint8 and not torch.equal(a, b)


def test_resize_is_batched_and_changes_the_fingerprint():
    ds = data.load("digits")
    big = data.resize_to(ds, 24)
    assert big.shape == (1, 24, 24) and big.images.dtype == torch.uint8 and len(big) == len(ds)
    assert big.fingerprint() != ds.fingerprint() and data.resize_to(ds, 8) is ds


def test_pretrained_backbone_loads_into_teach_init_with_no_missing_or_unexpected_keys(tmp_path, rotation_ckpt):
    ckpt = artifacts.load_checkpoint(rotation_ckpt)
    model, _, parents = make_model(ModelOptions(arch="cnn-s", init=rotation_ckpt), data.load("digits"))
    own = model.state_dict()
    assert set(own) == set(ckpt.model_state())
    assert all(torch.equal(own[k], v) for k, v in ckpt.model_state().items())
    assert parents[0]["role"] == "init"
    out = tmp_path / "fine.safetensors"
    r = dpl("teach", "--init", rotation_ckpt, "--labeled-per-class", "10", "--epochs", "1", *SMALL, "-o", out)
    assert r.code == 0, r


def test_backbone_pretrained_on_other_classes_keeps_a_fresh_classifier(tmp_path):
    root = write_imagefolder(tmp_path / "imgs", size=8, per_class=4)
    out = tmp_path / "other.safetensors"
    r = dpl("pretrain", "--data", f"imagefolder:{root}", "--epochs", "1", *SMALL, "-o", out)
    assert r.code == 0, r
    ckpt = artifacts.load_checkpoint(out)
    assert ckpt.num_classes == 3
    torch.manual_seed(0)
    model, _, _ = make_model(ModelOptions(arch="cnn-s", init=out), data.load("digits"))
    own = model.state_dict()
    backbone = {k: v for k, v in ckpt.model_state().items() if not k.startswith("head.fc.")}
    assert all(torch.equal(own[k], v) for k, v in backbone.items())
    assert own["head.fc.weight"].shape == (10, 64)
    r = dpl("teach", "--init", out, "--epochs", "1", *SMALL, "-o", tmp_path / "t.safetensors")
    assert r.code == 0, r


def test_linear_and_knn_probes_report_per_layer_and_per_k(rotation_ckpt, tmp_path):
    r = dpl("eval", rotation_ckpt, "--linear-probe", "--layer", "stages.0", "--knn", "1", "--knn", "20",
            "--labeled-per-class", "20", "--device", "cpu", "--json")
    assert r.code == 0, r
    result = json.loads(r.stdout)
    assert {"top1", "n", "per_class"} <= set(result)                    # eval's own keys stay
    assert set(result["linear_probe"]) == {"features", "stages.0"} and set(result["knn"]) == {"1", "20"}
    assert all(0.5 < v <= 1 for v in [*result["linear_probe"].values(), *result["knn"].values()])
    random = tmp_path / "random.safetensors"
    assert dpl("pretrain", "--epochs", "0", *SMALL, "-o", random).code == 0
    r = dpl("eval", random, rotation_ckpt, "--knn", "5", "--device", "cpu")
    assert r.code == 0, r
    assert "kNN k=5" in r.stderr and "random.safetensors" in r.stderr


def test_bad_inputs_are_refused_with_one_line_and_nothing_written(tmp_path, rotation_ckpt):
    out = tmp_path / "x.safetensors"
    assert_refused(dpl("pretrain", "--task", "colour", *SMALL, "-o", out), "unknown pretext task", "rotation")
    assert_refused(dpl("pretrain", "--task", "jigsaw", *SMALL, "-o", out), "24x24", "8x8", "--resize")
    assert_refused(dpl("pretrain", "--task", "context", "--resize", "16", *SMALL, "-o", out), "24x24")
    labels = tmp_path / "labels"
    labels.mkdir()
    assert_refused(dpl("teach", "--init", labels, *SMALL, "-o", out), "folder")
    assert_refused(dpl("eval", labels, "--linear-probe"), "no backbone")
    headless = tmp_path / "headless.safetensors"
    ckpt = artifacts.load_checkpoint(rotation_ckpt)
    artifacts.save(headless, ckpt.objective_state(), "checkpoint", ckpt.meta)
    assert_refused(dpl("teach", "--init", headless, *SMALL, "-o", out), "do not fit")
    assert_refused(dpl("eval", rotation_ckpt, "--layer", "stages.9", "--device", "cpu"), "no layer 'stages.9'")
    assert not out.exists()
