"""dpl eval's records: the confusion matrix, the reliability bins the ECE comes from, which weights and seed a
checkpoint holds, runs grouped over seeds (--seeds), and the entry points the plot and report commands use."""

import json
import statistics
import sys

import pytest
import torch

from conftest import assert_refused, dpl, write_photos
from dpl.cli.common import SEED_VARIANTS
from dpl.cli.measure import label_truth, measure_checkpoint
from dpl.core import artifacts, data
from dpl.core.reporting import evaluate
from dpl.core.engine import train


def teach(*args) -> None:
    """`dpl teach` in-process, recording `dpl ARGS` as its command line (in-process it would be pytest's)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["dpl", "teach", *map(str, args)])
        r = dpl("teach", *args)
    assert r.code == 0, r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs that differ only in --seed (one written --seed=1) and -o, and one with other --epochs."""
    root = tmp_path_factory.mktemp("runs")
    common = ("--data", "digits", "--arch", "cnn-s", "--batch-size", "128", "--device", "cpu")
    teach(*common, "--epochs", "1", "--seed", "0", "-o", root / "a.safetensors")
    teach(*common, "--epochs", "1", "--seed=1", "--output", root / "b.safetensors")
    teach(*common, "--epochs", "2", "--seed", "0", "-o", root / "c.safetensors")
    return [root / f"{name}.safetensors" for name in "abc"]


def test_eval_json_has_confusion_reliability_weights_and_seed(runs):
    r = dpl("eval", runs[0], "--json", "--device", "cpu")
    assert r.code == 0, r
    result = json.loads(r.stdout)
    meta = artifacts.read_header(runs[0]).meta
    assert result["weights"] == meta["weights"] and result["weights"]["kept"] in ("last", "best")
    assert result["seed"] == 0

    bins, n = result["reliability"]["bins"], result["reliability"]["n"]
    assert len(bins) == 15 and n == result["n"] and sum(b["count"] for b in bins) == n
    assert bins[0]["lo"] == 0 and bins[-1]["hi"] == 1
    assert all(abs(b["hi"] - b["lo"] - 1 / 15) < 1e-12 for b in bins)
    for b in bins:
        assert (b["confidence"] is None) == (b["accuracy"] is None) == (b["count"] == 0)
        if b["count"]:
            assert b["lo"] < b["confidence"] <= b["hi"] and 0 <= b["accuracy"] <= 1
    ece = sum(b["count"] / n * abs(b["confidence"] - b["accuracy"]) for b in bins if b["count"])
    assert abs(ece - result["ece"]) < 1e-6

    test = data.load("digits", default_split="test")
    counts = torch.bincount(test.labels, minlength=10).tolist()
    confusion = result["confusion"]
    assert [sum(row) for row in confusion] == counts and sum(counts) == result["n"]
    for c, row in enumerate(confusion):
        assert abs(row[c] / counts[c] - result["per_class"][c]) < 1e-6
    assert abs(sum(confusion[c][c] for c in range(10)) / result["n"] - result["top1"]) < 1e-6
    # the detail table says which weights were read
    r = dpl("eval", runs[0], "--device", "cpu")
    assert r.code == 0 and "weights" in r.stderr and "(epoch 1" in r.stderr, r


def test_measure_checkpoint_is_what_eval_json_prints(runs):
    printed = json.loads(dpl("eval", runs[2], "--json", "--device", "cpu").stdout)
    measured = measure_checkpoint(runs[2], train.runtime("cpu"))
    assert json.loads(json.dumps(measured)) == printed
    assert measured["data"] == "digits:test" and measured["weights"]["epoch"] == 2


def test_seeds_groups_runs_that_differ_only_in_seed_and_output(runs):
    r = dpl("eval", *runs, "--seeds", "--json", "--device", "cpu")
    assert r.code == 0, r
    out = json.loads(r.stdout)
    results, groups = out["results"], out["groups"]
    assert [x["checkpoint"] for x in results] == [str(p) for p in runs]
    assert "confusion" in results[0] and results[1]["seed"] == 1
    assert [g["n"] for g in groups] == [2, 1]
    pair, alone = groups
    assert pair["checkpoints"] == [str(runs[0]), str(runs[1])] and pair["seeds"] == [0, 1]
    assert alone["checkpoints"] == [str(runs[2])] and alone["seeds"] == [0]
    assert pair["command"][:2] == ["dpl", "teach"] and "--epochs" in pair["command"]
    assert not {"--seed", "--seed=1", "-o", "--output"} & set(pair["command"])
    assert not any(str(p) in pair["command"] for p in runs)
    for metric in ("top1", "nll", "ece"):
        values = [results[0][metric], results[1][metric]]
        assert abs(pair[f"{metric}_mean"] - statistics.fmean(values)) < 1e-9
        assert abs(pair[f"{metric}_std"] - statistics.stdev(values)) < 1e-9
        assert alone[f"{metric}_mean"] == results[2][metric] and alone[f"{metric}_std"] is None
    r = dpl("eval", *runs, "--seeds", "--device", "cpu")
    assert r.code == 0 and "±" in r.stderr and "--seed" not in r.stderr, r
    # the comparison table has a weights column
    r = dpl("eval", *runs, "--device", "cpu")
    assert r.code == 0 and "weights" in r.stderr and "(epoch 2)" in r.stderr, r


def test_seed_groups_keeps_runs_without_a_command_apart():
    results = [{"checkpoint": f"{i}.safetensors", "seed": i, "top1": 0.5 + i / 10, "nll": 1.0, "ece": 0.1}
               for i in range(4)]
    commands = [["dpl", "teach", "--seed", "0", "-o", "0.safetensors"], None,
                ["dpl", "teach", "-o2.safetensors", "--seed=2", "--device", "cpu", "--force"], None]
    groups = evaluate.seed_groups(results, commands, SEED_VARIANTS)
    assert [g["checkpoints"] for g in groups] == [["0.safetensors", "2.safetensors"], ["1.safetensors"],
                                                 ["3.safetensors"]]
    assert groups[0]["command"] == ["dpl", "teach"] and groups[1]["command"] is None
    assert abs(groups[0]["top1_mean"] - 0.6) < 1e-12 and groups[0]["nll_std"] == 0


def test_reliability_bins_give_the_ece_on_random_probabilities():
    torch.manual_seed(0)
    probs = (torch.randn(2000, 10) * 2).softmax(dim=1)
    labels = torch.randint(0, 10, (2000,))
    bins = evaluate.reliability_bins(probs, labels)
    assert sum(b["count"] for b in bins) == 2000
    confidence, predicted = probs.double().max(dim=1)
    correct = (predicted == labels).double()
    direct = 0.0
    for b in bins:
        members = (confidence > b["lo"]) & (confidence <= b["hi"])
        assert int(members.sum()) == b["count"]
        if b["count"]:
            assert abs(b["confidence"] - float(confidence[members].mean())) < 1e-12
            assert abs(b["accuracy"] - float(correct[members].mean())) < 1e-12
            direct += b["count"] / 2000 * abs(b["confidence"] - b["accuracy"])
    assert abs(evaluate.expected_calibration_error(probs, labels) - direct) < 1e-6
    assert evaluate.expected_calibration_error(probs, labels) == evaluate.calibration_error(bins)


def test_reliability_bins_hold_their_upper_edge_and_zero_lands_in_the_first():
    probs = torch.tensor([[0.5, 0.5], [0.25, 0.25], [1.0, 0.0], [0.0, 0.0], [0.75, 0.25]])
    bins = evaluate.reliability_bins(probs, torch.tensor([0, 1, 0, 0, 1]), bins=4)    # edges 0, .25, .5, .75, 1
    assert [b["count"] for b in bins] == [2, 1, 1, 1]
    assert bins[0]["confidence"] == 0.125 and bins[0]["accuracy"] == 0.5
    assert evaluate.confusion_matrix(torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 0]), 2) == [[1, 1], [1, 2]]


def test_label_truth_of_a_partition_and_of_a_pool(tmp_path, runs):
    teacher = runs[2]
    r = dpl("label", teacher, "--data", "digits", "--labeled-per-class", "5", "--device", "cpu", "-o", tmp_path / "l")
    assert r.code == 0, r
    labels, truth, ds = label_truth(tmp_path / "l")
    assert ds.part == "unlabeled" and len(truth) == len(labels) == len(ds)
    assert torch.equal(truth, ds.labels[labels.index]) and (truth >= 0).all()

    pool = write_photos(tmp_path / "pool", per_class=2, flat=True)
    r = dpl("label", teacher, "--data", f"imagefolder:{pool}", "--device", "cpu", "-o", tmp_path / "p")
    assert r.code == 0, r
    labels, truth, ds = label_truth(tmp_path / "p")
    assert len(truth) == len(labels) == 20 and (truth == -1).all()
    assert_refused(dpl("eval", tmp_path / "p"), "no ground truth")
