"""dpl semi: FixMatch's mask, FlexMatch's thresholds, the labeled/unlabeled mix per global step under any
number of ranks, end-to-end runs on digits, refusals, and an exact resume of FlexMatch's record."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_refused, dpl
from dpl.core import artifacts
from dpl.core.methods import semi

SMALL = ["--labeled-per-class", "10", "--arch", "cnn-s", "--batch-size", "32", "--mu", "4", "--device", "cpu"]


def log_of(out) -> list[dict]:
    path = out.with_name(out.name.removesuffix(".safetensors") + ".metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fixmatch_keeps_the_pseudo_labels_that_reach_the_threshold():
    confidence = torch.tensor([0.5, 0.949, 0.95, 0.99, 1.0])
    prediction = torch.tensor([0, 1, 2, 0, 1])
    fixed = semi.Thresholds(0.95, 3, torch.device("cpu"))
    assert fixed.current().tolist() == pytest.approx([0.95] * 3)
    assert semi.pseudo_mask(confidence, prediction, fixed.current()).tolist() == [0, 0, 1, 1, 1]
    # per-class thresholds: each pseudo-label against its own class's
    per_class = torch.tensor([0.4, 0.99, 0.96])
    assert semi.pseudo_mask(confidence, prediction, per_class).tolist() == [1, 0, 0, 1, 1]
    assert semi.pseudo_mask(confidence, prediction, torch.ones(3)).tolist() == [0, 0, 0, 0, 1]   # --threshold 1


def test_flexmatch_thresholds_follow_the_learning_effects():
    # 10 unlabeled samples, 3 classes: class 0 predicted confidently 4 times, class 1 twice, class 2 never, 4 unused
    predicted = torch.tensor([0, 0, 0, 0, 1, 1, -1, -1, -1, -1])
    beta = semi.learning_effects(predicted, 3)
    assert beta.tolist() == pytest.approx([1.0, 0.5, 0.0])          # max(4 for class 0, 4 unused) = 4
    thresholds = semi.flex_thresholds(beta, 0.9)
    assert thresholds.tolist() == pytest.approx([0.9, 0.9 * 0.5 / 1.5, 0.0])     # tau * x / (2 - x)
    # warm-up: while most samples are unused, they set the scale
    assert semi.learning_effects(torch.tensor([0, 1, -1, -1, -1, -1]), 2).tolist() == pytest.approx([0.25, 0.25])
    assert semi.learning_effects(torch.full((5,), -1), 2).tolist() == [0.0, 0.0]  # at the start: thresholds 0

    flex = semi.FlexThresholds(0.9, 3, n_unlabeled=6, device=torch.device("cpu"))
    assert flex.current().tolist() == [0.0, 0.0, 0.0]
    flex.update(torch.tensor([0, 1, 2, 3]), torch.tensor([0.95, 0.5, 0.9, 0.91]), torch.tensor([2, 0, 1, 1]))
    assert flex.predicted.tolist() == [2, -1, 1, 1, -1, -1]       # only confidences >= tau are recorded
    flex.update(torch.tensor([0, 1]), torch.tensor([0.3, 0.99]), torch.tensor([0, 0]))
    assert flex.predicted.tolist() == [2, 0, 1, 1, -1, -1]        # a later unconfident one keeps the record
    beta = torch.tensor([1 / 2, 2 / 2, 1 / 2])                       # counts 1, 2, 1; 2 unused
    assert flex.current().tolist() == pytest.approx(semi.flex_thresholds(beta, 0.9).tolist())


def test_the_mix_of_each_global_step_is_the_same_for_any_number_of_ranks(monkeypatch):
    n_labeled, n_unlabeled, seed = 30, 500, 4
    monkeypatch.setenv("WORLD_SIZE", "1")
    one_plan = semi.mix_of(n_labeled, n_unlabeled, 8, 3)
    one = [one_plan.indices(seed, epoch, "cpu") for epoch in (0, 1)]
    ranks = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        plan = semi.mix_of(n_labeled, n_unlabeled, 4, 3)          # --batch-size is per rank
        assert plan.steps == one_plan.steps == 500 // 24 and plan.pseudo == 12
        ranks.append([plan.indices(seed, epoch, "cpu") for epoch in (0, 1)])
    for epoch in (0, 1):
        for step, (il, iu) in enumerate(one[epoch]):
            for part, whole in enumerate((il, iu)):
                union = torch.cat([r[epoch][step][part] for r in ranks])
                assert sorted(union.tolist()) == sorted(whole.tolist()), (epoch, step, part)
    assert not torch.equal(one[0][0][1], one[1][0][1])     # each epoch its own order


def test_fixmatch_and_flexmatch_end_to_end_record_masks_and_thresholds(tmp_path):
    for algorithm in ("fixmatch", "flexmatch"):
        out = tmp_path / f"{algorithm}.safetensors"
        r = dpl("semi", "--algorithm", algorithm, *SMALL, "--epochs", "1", "--threshold", "0.7", "--log-every", "4",
                "-o", out)
        assert r.code == 0, r
        assert r.stdout.strip() == str(out)
        meta = artifacts.read_header(out).meta
        assert meta["semi"]["algorithm"] == algorithm and meta["semi"]["mu"] == 4
        assert meta["data"]["part"] == "labeled" and meta["unlabeled"]["part"] == "unlabeled"
        assert 0 < meta["metrics"]["test_top1"] <= 1
        log = log_of(out)
        steps, epochs = [e for e in log if e["event"] == "step"], [e for e in log if e["event"] == "epoch"]
        assert len(epochs) == 1 and steps and meta["history"][0]["mask_ratio"] == epochs[0]["mask_ratio"]
        for record in steps + epochs:
            assert 0 <= record["mask_ratio"] <= 1 and 0 <= record["pseudo_acc"] <= 1
            assert record["mask_correct"] <= record["mask_ratio"] + 1e-6
            assert sum(record["mask_class_frac"]) == pytest.approx(record["mask_ratio"], abs=1e-5)
            assert ("thresholds" in record) == (algorithm == "flexmatch")
            if algorithm == "flexmatch":
                assert len(record["thresholds"]) == 10 and all(0 <= t <= 0.7 for t in record["thresholds"])
    assert len(meta["semi"]["thresholds"]) == 10


def test_bad_thresholds_and_missing_partition_are_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "s.safetensors"
    assert_refused(dpl("semi", *SMALL, "--threshold", "0", "-o", out), "--threshold", "(0, 1]")
    assert_refused(dpl("semi", *SMALL, "--threshold", "1.5", "-o", out), "--threshold", "(0, 1]")
    assert_refused(dpl("semi", "--arch", "cnn-s", "-o", out), "--labeled-per-class")
    assert_refused(dpl("semi", *SMALL, "--algorithm", "meanteacher", "-o", out), "meanteacher", "fixmatch, flexmatch")
    assert_refused(dpl("semi", *SMALL, "--randaugment", "0,9", "-o", out), "--randaugment")
    assert_refused(dpl("semi", *SMALL, "--mu", "50", "-o", out), "--mu", "unlabeled")
    assert list(tmp_path.iterdir()) == []


# FlexMatch at a threshold low enough that its record of predictions fills within the run.
RESUMED = ["semi", "--algorithm", "flexmatch", *SMALL, "--epochs", "4", "--threshold", "0.5", "--seed", "2"]


def start(out, *extra):
    exe = os.path.join(os.path.dirname(sys.executable), "dpl")
    return subprocess.Popen([exe, *RESUMED, *extra, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_flexmatch_resumes_exactly_with_its_record_of_predictions(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # as the signalled process, whose OMP_NUM_THREADS is 1
    try:
        whole = tmp_path / "whole.safetensors"
        assert dpl(*RESUMED, "-o", whole).code == 0
        out, state = tmp_path / "t.safetensors", tmp_path / "t.safetensors.resume"
        proc = start(out)
        while not state.exists():
            assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 143, err
        predicted = artifacts.load_tensors(artifacts.read_header(state, kind="resume"))["objective.predicted"]
        assert (predicted >= 0).any() and len(predicted) == 1252     # digits: 1,352 training samples less 100 labeled
        r = dpl(*RESUMED, "--resume", "-o", out)
        assert r.code == 0, r
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(str(out)), load_file(str(whole))
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()) <= 1e-6
    strip = lambda log: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in log]  # noqa: E731
    assert strip(log_of(out)) == strip(log_of(whole))
