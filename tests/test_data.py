import pytest
import torch

from conftest import needs_fashion, write_imagefolder
from dpl.core import DplError, data


def test_digits_has_a_fixed_disjoint_train_test_split():
    train, test = data.load("digits"), data.load("digits:test")
    assert train.images.dtype == torch.uint8 and train.shape == (1, 8, 8)
    assert len(train) + len(test) == 1797
    assert 0.2 < len(test) / 1797 < 0.3
    assert train.num_classes == test.num_classes == 10
    assert torch.bincount(test.labels).min() >= 40          # stratified
    rows = {bytes(x.numpy()) + bytes([int(y)]) for x, y in zip(train.images, train.labels)}
    overlap = sum(bytes(x.numpy()) + bytes([int(y)]) in rows for x, y in zip(test.images, test.labels))
    assert overlap < 5   # digits has a few exact duplicate images; the split itself is by position
    assert data.load("digits").fingerprint() == train.fingerprint()


@needs_fashion
def test_fashion_mnist_from_debian_idx_files():
    train, test = data.load("fashion-mnist"), data.load("fashion-mnist:test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.classes[0] == "T-shirt/top" and len(train.classes) == 10
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert train.hflip


def test_imagefolder_with_splits_grey_and_colour(tmp_path):
    root = write_imagefolder(tmp_path / "grey")
    train = data.load(f"imagefolder:{root}")
    test = data.load(f"imagefolder:{root}:test")
    assert train.shape == (1, 12, 12) and len(train) == 18 and len(test) == 18
    assert train.classes == ["cat", "dog", "owl"]
    assert torch.bincount(train.labels).tolist() == [6, 6, 6]
    colour = data.load(f"imagefolder:{write_imagefolder(tmp_path / 'rgb', mode='RGB', splits=('',))}")
    assert colour.shape == (3, 12, 12) and colour.split == "train"


def test_imagefolder_bad_inputs(tmp_path):
    root = write_imagefolder(tmp_path / "one", classes=("only",), splits=("",))
    with pytest.raises(DplError, match="at least 2 class"):
        data.load(f"imagefolder:{root}")
    root = write_imagefolder(tmp_path / "broken", splits=("",))
    (root / "cat" / "bad.png").write_bytes(b"not a png at all")
    ds = data.load(f"imagefolder:{root}")           # an unreadable file inside a usable source: skipped, named
    assert len(ds) == 18 and ds.skipped == ("cat/bad.png",) and ds.describe()["skipped_files"] == ["cat/bad.png"]
    with pytest.raises(DplError, match="no such folder"):
        data.load(f"imagefolder:{tmp_path / 'absent'}")


def test_unknown_dataset_and_split_list_the_valid_names():
    with pytest.raises(DplError, match="unknown dataset 'nope'.*digits.*fashion-mnist"):
        data.load("nope")
    with pytest.raises(DplError, match="no split 'val'.*train, test"):
        data.load("digits:val")


def test_partition_is_deterministic_stratified_and_disjoint():
    p = data.Partition(labeled_per_class=7, seed=3)
    lab, unl = data.load("digits", partition=p, part="labeled"), data.load("digits", partition=p, part="unlabeled")
    assert torch.bincount(lab.labels).tolist() == [7] * 10
    assert len(lab) + len(unl) == len(data.load("digits"))
    assert not set(lab.indices.tolist()) & set(unl.indices.tolist())
    again = data.load("digits", partition=p, part="labeled")
    assert torch.equal(again.indices, lab.indices) and again.fingerprint() == lab.fingerprint()
    other = data.load("digits", partition=data.Partition(labeled_per_class=7, seed=4), part="labeled")
    assert not torch.equal(other.indices, lab.indices)
    assert lab.fingerprint() != unl.fingerprint() != other.fingerprint()
    # the unlabeled part is addressable as its own split
    assert torch.equal(data.load("digits:unlabeled", partition=p).indices, unl.indices)


def test_partition_by_total_spreads_over_classes():
    lab = data.load("digits", partition=data.Partition(labeled=25), part="labeled")
    assert sorted(torch.bincount(lab.labels).tolist()) == [2] * 5 + [3] * 5


def test_partition_larger_than_a_class_is_refused():
    with pytest.raises(DplError, match="class .* has only .* fewer than the 500"):
        data.load("digits", partition=data.Partition(labeled_per_class=500), part="labeled")
