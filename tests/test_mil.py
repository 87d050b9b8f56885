"""dpl mil: bags built from a source (deterministic, positives by the rule, sizes clipped), bag folders, padded
batches that give each bag what it gets alone, instance AUC on a planted case, each pooling end to end through
the CLI, and the refusals."""

import json
import shutil

import pytest
import torch
from torch import nn

from conftest import assert_refused, dpl
from dpl.core import artifacts, data, models
from dpl.core.data import bags
from dpl.core.methods import mil
from dpl.core.engine import train

SMALL = ["--data", "digits", "--target-class", "3", "--bags", "8", "--test-bags", "12", "--bag-size", "4",
         "--arch", "cnn-s", "--epochs", "2", "--bag-batch", "4", "--device", "cpu"]


def test_built_bags_are_deterministic_and_positive_when_they_hold_the_target():
    ds = data.load("digits")
    spec = bags.BagSpec(target="3", bags=41, size=3, size_std=3, seed=1)
    a, b = bags.build(ds, spec, 41), bags.build(ds, spec, 41)
    assert torch.equal(a.offsets, b.offsets) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.instances.images, b.instances.images) and torch.equal(a.instance_labels, b.instance_labels)
    sizes = a.sizes
    assert sizes.min() == 1 and (sizes == 1).sum() > 3                 # N(3, 3) rounded: many clipped to 1
    assert a.labels.tolist() == [1 - i % 2 for i in range(41)]           # every other bag, from the first
    for k in range(len(a)):
        held = a.instance_labels[a.offsets[k]: a.offsets[k + 1]]
        assert int(a.labels[k]) == int(held.max())                        # positive iff it holds a 3
    # the hidden instance labels are the source's labels of the instances drawn; training sees none
    assert torch.equal(a.instance_labels, (ds.labels[a.instances.indices] == 3).long())
    assert torch.equal(a.instances.images, ds.images[a.instances.indices])
    assert (a.instances.labels == -1).all()
    other = bags.build(ds, bags.BagSpec(target="3", bags=41, size=3, size_std=3, seed=2), 41)
    assert not torch.equal(other.offsets, a.offsets) or not torch.equal(other.instances.images, a.instances.images)
    test = bags.build(data.load("digits:test"), spec, 41)
    assert not torch.equal(test.instances.images[:5], a.instances.images[:5])    # each split its own stream


def _planted_encoder():
    return models.build(models.arch_spec("cnn-s", num_classes=1, in_channels=1, image_size=8))


@pytest.mark.parametrize("pooling", mil.POOLINGS)
def test_a_padded_batch_gives_each_bag_what_it_gets_alone(pooling):
    torch.manual_seed(0)
    net = mil.MilNet(_planted_encoder(), pooling, 16).eval()
    sizes = torch.tensor([3, 1, 6, 2])
    x = torch.randn(int(sizes.sum()), 1, 8, 8)
    with torch.no_grad():
        logits, scores = net(x, sizes)
        offsets = bags.offsets_of(sizes).tolist()
        for k in range(len(sizes)):
            alone, alone_scores = net(x[offsets[k]: offsets[k + 1]], sizes[k: k + 1])
            assert torch.allclose(alone, logits[k: k + 1], atol=1e-5), (pooling, k)
            assert torch.allclose(alone_scores, scores[offsets[k]: offsets[k + 1]], atol=1e-5), (pooling, k)
            if pooling in mil.ATTENTION:
                assert float(scores[offsets[k]: offsets[k + 1]].sum()) == pytest.approx(1.0, abs=1e-5)


class Planted(nn.Module):
    """A bag's logit is its brightest instance's mean pixel; attention (or, for max pooling, the instance score)
    follows the mean pixel."""

    def __init__(self, pooling):
        super().__init__()
        self.pooling = pooling

    def forward(self, x, sizes):
        s = x.mean(dim=(1, 2, 3))
        mask = torch.arange(int(sizes.max())) < sizes[:, None]
        weights = mil.padded(s * 10, mask, -torch.inf).softmax(1)[mask]
        return mil.padded(s, mask, -torch.inf).max(1).values, weights if self.pooling == "attention" else s


def test_instance_auc_is_measured_against_the_hidden_instance_labels():
    ds = data.load("digits")
    planted = bags.build(ds, bags.BagSpec(target="0", bags=30, size=5, seed=0), 30)
    bright = planted.instance_labels.bool()
    images = planted.instances.images.clone()
    images[bright], images[~bright] = 200, 20                     # the positives are the bright instances
    planted.instances.images = images
    meta, rt = {"mean": [0.0], "std": [1.0]}, train.runtime("cpu")
    found = mil.measure(Planted("max"), planted, meta, rt, batch_size=7, per_bag=True)
    assert found["bag_auc"] == 1.0 and found["instance_auc"] == 1.0 and found["instance_auc_positive_bags"] == 1.0
    assert found["bags"] == 30 and found["positive_bags"] == 15 and found["instances"] == len(images)
    first = found["per_bag"][0]
    assert first["label"] == 1 and first["instance_labels"] == planted.instance_labels[: len(first["scores"])].tolist()
    # attention weights: within positive bags they find the positives; over all bags they are relative to
    # each bag's size, so a small negative bag's uniform weights can outrank a positive of a bag with several
    found = mil.measure(Planted("attention"), planted, meta, rt, batch_size=7, per_bag=True)
    assert found["instance_auc_positive_bags"] == 1.0 and 0.9 < found["instance_auc"] < 1.0
    assert all(sum(b["attention"]) == pytest.approx(1.0, abs=1e-5) for b in found["per_bag"])
    planted.instances.images = 220 - images                         # the positives now the darkest: AUC 0
    assert mil.measure(Planted("max"), planted, meta, rt)["instance_auc"] == 0.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A MIL model of each pooling, trained for two epochs on bags of digits."""
    root = tmp_path_factory.mktemp("mil")
    outs = {}
    for pooling in mil.POOLINGS:
        out = root / f"{pooling}.safetensors"
        r = dpl("mil", *SMALL, "--pooling", pooling, "-o", out)
        assert r.code == 0, r
        assert r.stdout.strip() == str(out)
        outs[pooling] = out
    return outs


def test_each_pooling_trains_and_eval_reports_bag_and_instance_auc(trained):
    r = dpl("eval", *trained.values())
    assert r.code == 0, r
    for pooling in mil.POOLINGS:
        assert pooling in r.stderr
    assert "bag AUC" in r.stderr and "instance AUC" in r.stderr
    meta = artifacts.read_header(trained["gated"]).meta
    assert meta["task"] == "mil" and meta["mil"]["pooling"] == "gated" and meta["num_classes"] == 1
    assert meta["mil"]["bags"]["target"] == 3 and meta["data"]["bags"] == 8
    assert {"test_bag_auc", "test_bag_acc", "test_instance_auc"} <= set(meta["metrics"])
    assert [h["epoch"] for h in meta["history"]] == [1, 2] and "bce" in meta["history"][0]
    info = dpl("info", trained["gated"])
    assert info.code == 0 and "mil       gated pooling; bags with class 3 (3) positive" in info.stderr


def test_eval_json_holds_each_bags_attention_weights(trained):
    r = dpl("eval", trained["attention"], "--json")
    assert r.code == 0, r
    found = json.loads(r.stdout)
    assert found["task"] == "mil" and found["bags"] == 12 and found["data"] == "digits:test"
    assert found["bag_auc"] == artifacts.read_header(trained["attention"]).meta["metrics"]["test_bag_auc"]
    assert len(found["per_bag"]) == 12
    for bag in found["per_bag"]:
        assert sum(bag["attention"]) == pytest.approx(1.0, abs=1e-4)
        assert len(bag["attention"]) == len(bag["instance_labels"])
        assert bag["label"] == max(bag["instance_labels"])
    scores = json.loads(dpl("eval", trained["max"], "--json").stdout)["per_bag"][0]["scores"]
    assert all(0 <= s <= 1 for s in scores)                        # max and mean: instance probabilities


def test_plot_bag_draws_the_weights_eval_json_gives(trained, tmp_path, teacher):
    from PIL import Image

    for pooling, key in (("gated", "attention"), ("mean", "scores")):
        evaluated = json.loads(dpl("eval", trained[pooling], "--json").stdout)["per_bag"]
        r = dpl("plot", "bag", trained[pooling], "--bag", "5", "--bag", "0", "-o", tmp_path / pooling, "--json")
        assert r.code == 0, r
        out = json.loads(r.stdout)
        assert out["files"] == [str(tmp_path / f"{pooling}.png"), str(tmp_path / f"{pooling}.svg")]
        with Image.open(out["files"][0]) as image:
            image.verify()
        data = out["data"]
        assert data["pooling"] == pooling and data["target"] == "3"
        assert [b["index"] for b in data["bags"]] == [5, 0]
        for drawn in data["bags"]:
            same = evaluated[drawn["index"]]                   # only the chosen bags went through the network
            assert drawn["bag"] == same["bag"] and drawn["label"] == same["label"]
            assert drawn["instance_labels"] == same["instance_labels"]
            assert drawn["prob"] == pytest.approx(same["prob"], abs=1e-5)
            assert drawn[key] == pytest.approx(same[key], abs=1e-5)
            assert drawn["shown"] == list(range(len(same[key])))
    # out of range, too many bags, a classifier: one line, nothing written
    for args, words in (((trained["max"], "--bag", "12"), ("--bag 12", "out of range", "12 bags (0..11)")),
                        ((trained["max"], "--bag", "-1"), ("--bag -1", "out of range")),
                        ((trained["max"], *[a for b in range(9) for a in ("--bag", str(b))]), ("at most", "8")),
                        ((teacher, "--bag", "0"), (str(teacher), "not a multiple-instance"))):
        assert_refused(dpl("plot", "bag", *args, "-o", tmp_path / "refused"), *words)
    assert not list(tmp_path.glob("refused*")) and not list(tmp_path.glob(".refused*"))


def _write_bag_folder(root, split_bags=(("train", 12), ("test", 8)), size=4):
    """Bags of digits as image files: bag folders, labels.csv and instances.csv per split."""
    from PIL import Image

    ds = data.load("digits")
    built = bags.build(ds, bags.BagSpec(target="1", bags=20, size=size, size_std=1, seed=0), 20)
    start = 0
    for split, n in split_bags:
        folder = root / split
        folder.mkdir(parents=True)
        labels, instances = ["bag,label"], []
        for k in range(start, start + n):
            name = f"b{k:03d}"
            (folder / name).mkdir()
            for i in range(int(built.offsets[k]), int(built.offsets[k + 1])):
                Image.fromarray(built.instances.images[i, 0].numpy(), "L").save(folder / name / f"{i}.png")
                instances.append(f"{name},{i}.png,{int(built.instance_labels[i])}")
            labels.append(f"{name},{int(built.labels[k])}")
        (folder / "labels.csv").write_text("\n".join(labels) + "\n")
        (folder / "instances.csv").write_text("\n".join(instances) + "\n")
        start += n
    return root


def test_a_bag_folder_end_to_end(tmp_path):
    root = _write_bag_folder(tmp_path / "slides")
    (root / "train" / "extra").mkdir()                       # a bag folder without a label: left out, said
    (root / "train" / "extra" / "x.png").write_bytes((root / "train" / "b000" / "0.png").read_bytes())
    out = tmp_path / "slides.safetensors"
    r = dpl("mil", "--data", f"bagfolder:{root}", "--arch", "cnn-s", "--epochs", "1", "--bag-batch", "4",
            "--pooling", "gated", "--device", "cpu", "-o", out)
    assert r.code == 0, r
    assert "12 bags (6 positive)" in r.stderr and "ignored 1 bag folders" in r.stderr and "test bags" in r.stderr
    meta = artifacts.read_header(out).meta
    assert meta["mil"]["bags"] == {} and meta["input"]["size"] == 8 and meta["data"]["spec"].endswith(":train")
    assert "mil       gated pooling; bags from a bag folder" in dpl("info", out).stderr
    found = json.loads(dpl("eval", out, "--json").stdout)
    assert found["bags"] == 8 and found["data"].endswith(":test") and found["instance_auc"] is not None
    assert found["per_bag"][0]["bag"] == "b012"
    # without instances.csv: bag figures only
    (root / "test" / "instances.csv").unlink()
    found = json.loads(dpl("eval", out, "--json").stdout)
    assert "instance_auc" not in found and found["bag_auc"] is not None


def test_bad_input_is_refused_before_anything_is_written(tmp_path, trained, teacher):
    out = tmp_path / "m.safetensors"
    assert_refused(dpl("mil", *SMALL[:2], "--target-class", "12", "-o", out), "--target-class '12'", "0..9")
    assert_refused(dpl("mil", "--data", "digits", "--target-class", "cat", "-o", out), "'cat'", "(0, 1, 2")
    assert_refused(dpl("mil", "--data", "digits", "-o", out), "--target-class")
    assert_refused(dpl("mil", *SMALL, "--bags", "0", "-o", out), "--bags must be at least 1")
    assert_refused(dpl("mil", *SMALL, "--bag-size", "1e12", "-o", out), "more than memory allows")
    assert_refused(dpl("mil", *SMALL, "--pooling", "sum", "-o", out), "unknown pooling 'sum'")
    root = _write_bag_folder(tmp_path / "slides", split_bags=(("train", 6),))
    spec = f"bagfolder:{root}"
    assert_refused(dpl("mil", "--data", spec, "--target-class", "1", "-o", out), "--target-class cannot apply")
    (root / "train" / "b099").mkdir()
    with open(root / "train" / "labels.csv", "a") as f:
        f.write("b099,1\n")
    assert_refused(dpl("mil", "--data", spec, "-o", out), "b099", "an empty bag")
    (root / "train" / "b099" / "0.png").write_bytes(b"not a png")
    assert_refused(dpl("mil", "--data", spec, "-o", out), "b099", "an empty bag", "decoded")
    (root / "train" / "labels.csv").write_text("bag,label\nb000,2\n")
    assert_refused(dpl("mil", "--data", spec, "-o", out), "label '2'", "not 0 or 1")
    (root / "train" / "labels.csv").unlink()
    assert_refused(dpl("mil", "--data", spec, "-o", out), "no labels.csv")
    assert not out.exists() and not list(tmp_path.glob("m.*"))
    # a MIL model where a classifier is expected, and the reverse
    mil_model = trained["attention"]
    assert_refused(dpl("label", mil_model, "-o", tmp_path / "labels"), "a multiple-instance (MIL) model",
                   "not a classifier")
    assert_refused(dpl("teach", "--init", mil_model, "-o", out), "not a classifier")
    assert_refused(dpl("eval", teacher, mil_model), str(teacher), "a classifier, not a multiple-instance")
    assert_refused(dpl("eval", mil_model, "--knn", "5"), "--knn cannot apply")
    with pytest.raises(Exception, match="not a multiple-instance"):
        mil.load_model(teacher)
    assert not out.exists() and not (tmp_path / "labels").exists()


def test_a_report_of_a_folder_skips_its_mil_models_and_says_so(trained, teacher, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    shutil.copy(trained["attention"], folder / "mil.safetensors")
    shutil.copy(teacher, folder / "t.safetensors")
    r = dpl("report", folder, "-o", tmp_path / "r.html")
    assert r.code == 0, r
    assert "skipped" in r.stderr and "mil.safetensors" in r.stderr and (tmp_path / "r.html").exists()
