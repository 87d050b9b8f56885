"""`dpl distill --loss X` end to end, online (--teacher) and offline (--labels from dpl label), one epoch each on
digits; the warm-up of the distillation terms driven by fit's clock; what each kind of label shard refuses."""

import math
from pathlib import Path

import pytest
import torch

from conftest import assert_refused, dpl
from dpl.core import artifacts, losses
from dpl.core.data import augment
from dpl.core.engine import train
from dpl.core.methods.distill import DistillOptions, distill_objective

LOSSES = sorted(losses.LOGIT_LOSSES)
ONE_EPOCH = ["--arch", "cnn-s", "--epochs", "1", "--batch-size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def shards(teacher, tmp_path_factory) -> dict[str, Path]:
    """The teacher's labels of the digits train split in each mode."""
    root = tmp_path_factory.mktemp("shards")
    made = {}
    for name, mode in {"soft": [], "top3": ["--topk", "3"], "top1": ["--topk", "1"], "hard": ["--hard"]}.items():
        r = dpl("label", teacher, *mode, "-o", root / name)
        assert r.code == 0, r
        made[name] = root / name
    return made


def history(out: Path) -> list[dict]:
    return artifacts.read_header(out).meta["history"]


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_distils_offline_from_soft_shards(loss, shards, tmp_path):
    out = tmp_path / f"{loss}.safetensors"
    r = dpl("distill", "--labels", shards["soft"], "--loss", loss, "--tau", "2", *ONE_EPOCH, "-o", out)
    assert r.code == 0, r
    meta = artifacts.read_header(out).meta
    assert meta["distill"]["loss"] == loss and meta["distill"]["tau"] == 2
    assert math.isfinite(history(out)[0]["pseudo"]) and history(out)[0]["pseudo"] >= 0
    assert meta["metrics"]["test_top1"] > 0.1


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_distils_online_from_a_live_teacher(loss, teacher, tmp_path):
    out = tmp_path / f"{loss}.safetensors"
    r = dpl("distill", "--teacher", teacher, "--labeled-per-class", "10", "--loss", loss, "--tau", "4", *ONE_EPOCH,
            "-o", out)
    assert r.code == 0, r
    first = history(out)[0]
    assert {"ce", "kd", "pseudo"} <= set(first) and all(math.isfinite(first[k]) for k in ("ce", "kd", "pseudo"))


def test_top_k_shards_serve_kd_and_dkd(shards, tmp_path):
    for loss in ("kd", "dkd"):
        r = dpl("distill", "--labels", shards["top3"], "--loss", loss, *ONE_EPOCH, "-o", tmp_path / f"{loss}.safetensors")
        assert r.code == 0, r


def test_dkd_records_mdistiller_s_weights_and_a_warm_up_of_a_quarter_of_a_short_run(shards, tmp_path):
    out = tmp_path / "dkd.safetensors"
    r = dpl("distill", "--labels", shards["soft"], "--loss", "dkd", *ONE_EPOCH, "-o", out)
    assert r.code == 0, r
    recorded = artifacts.read_header(out).meta["distill"]
    assert (recorded["dkd_alpha"], recorded["dkd_beta"], recorded["loss_warmup_epochs"]) == (1.0, 8.0, 0.25)
    r = dpl("distill", "--labels", shards["soft"], "--loss", "kd", "--loss-warmup-epochs", "1", *ONE_EPOCH, "-o", out,
            "--force")
    assert r.code == 0, r
    recorded = artifacts.read_header(out).meta["distill"]
    assert (recorded["dkd_alpha"], recorded["dkd_beta"], recorded["loss_warmup_epochs"]) == (None, None, 1.0)


@pytest.mark.parametrize("loss", ["kd", "dkd"])
def test_the_warm_up_scales_the_distillation_terms_by_the_clock_s_epochs(loss):
    """The objective at step s of a 4-step epoch, warm-up 2 epochs: the terms are (s / 4) / 2 of the unwarmed ones."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    images, y = torch.randint(0, 255, (6, 1, 4, 4), dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1, 2])
    stored = torch.rand(4, 3).softmax(1)
    base = DistillOptions(loss=loss).resolved(None, True, True, True, epochs=10)
    teachers = type("Fixed", (), {"probs": lambda self, x, tau: torch.rand(len(x), 3, generator=torch.Generator()
                                                                                .manual_seed(1)).softmax(1)})()

    def terms(warmup: float, clock: train.Clock | None):
        opts = DistillOptions(loss=loss, loss_warmup_epochs=warmup).resolved(None, True, True, True, epochs=10)
        step = distill_objective(net, y, lambda iu, t, view: stored[iu], teachers, {"mean": [0.5], "std": [0.25]},
                                 augment.Noise(), opts, train.runtime("cpu"), clock)
        found, _ = step(((torch.arange(2), torch.arange(4)), images))
        return found

    full = terms(0.0, None)
    assert base.loss_warmup_epochs == (2.5 if loss == "dkd" else 0.0)
    for s, factor in [(0, 0.0), (1, 0.125), (4, 0.5), (6, 0.75), (8, 1.0), (20, 1.0)]:
        warmed = terms(2.0, train.Clock(epoch=s // 4, step=s, steps_per_epoch=4))
        assert warmed["ce"] == full["ce"]
        for k in ("kd", "pseudo"):
            assert warmed[k].item() == pytest.approx(factor * full[k].item(), rel=1e-6, abs=1e-9)


def test_shard_modes_that_cannot_serve_a_loss_are_refused(shards, tmp_path):
    out = tmp_path / "s.safetensors"
    for loss in ("lskd", "mse"):
        assert_refused(dpl("distill", "--labels", shards["top3"], "--loss", loss, "-o", out),
                       f"--loss {loss}", "top 3", "--soft")
        assert_refused(dpl("distill", "--labels", shards["hard"], "--loss", loss, "-o", out), f"--loss {loss}", "hard")
    assert_refused(dpl("distill", "--labels", shards["top1"], "--loss", "dkd", "-o", out), "--loss dkd", "top 1",
                   "--topk 2")
    assert not out.exists() and not out.with_suffix(".metrics.jsonl").exists()


def test_options_of_another_loss_and_a_warm_up_longer_than_the_run_are_refused(shards, teacher, tmp_path):
    out = tmp_path / "s.safetensors"
    assert_refused(dpl("distill", "--labels", shards["soft"], "--dkd-alpha", "2", "-o", out), "--dkd-alpha", "--loss kd")
    assert_refused(dpl("distill", "--teacher", teacher, "--loss", "lskd", "--dkd-beta", "4", "-o", out),
                   "--dkd-beta", "--loss lskd")
    assert_refused(dpl("distill", "--labels", shards["soft"], "--loss", "dkd", "--dkd-beta", "-1", "-o", out),
                   "--dkd-beta", ">= 0")
    assert_refused(dpl("distill", "--labels", shards["soft"], "--loss", "dkd", "--epochs", "5",
                       "--loss-warmup-epochs", "6", "-o", out), "--loss-warmup-epochs 6", "--epochs 5")
    assert not out.exists() and not out.with_suffix(".metrics.jsonl").exists()


@pytest.mark.parametrize("loss", ["kd", "dkd"])
def test_offline_kd_gives_stored_rows_the_terms_a_live_teacher_gives_labeled_rows(loss):
    """--alpha with --labels of labeled images: a stored row's terms are those of a labeled row under a live teacher
    whose probabilities are the stored ones (ce on the true label; alpha * the loss, its target class the label)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    images, y = torch.randint(0, 255, (4, 1, 4, 4), dtype=torch.uint8), torch.tensor([2, 1, 0, 1])
    stored = torch.rand(4, 3).softmax(1)
    rt, inp = train.runtime("cpu"), {"mean": [0.5], "std": [0.25]}
    live = DistillOptions(loss=loss, alpha=0.5).resolved(None, True, True, False, epochs=10)
    teachers = type("Fixed", (), {"probs": lambda self, x, tau: stored})()
    online, _ = distill_objective(net, y, None, teachers, inp, augment.Noise(), live, rt)(((torch.arange(4), None), images))
    offline_opts = DistillOptions(loss=loss, alpha=0.5).resolved(type("L", (), {"meta": {"tau": 1.0}, "mode": "soft"})(),
                                                                 False, False, True, epochs=10, known=True)
    assert offline_opts.true_labels and offline_opts.unlabeled_weight == 0.5
    step = distill_objective(net, None, lambda iu, t, view: stored[iu], None, inp, augment.Noise(), offline_opts, rt,
                             y_stored=y)
    offline, stats = step(((None, torch.arange(4)), images))
    assert set(offline) == {"ce", "kd"} and "acc" in stats
    for k in ("ce", "kd"):
        assert offline[k].item() == pytest.approx(online[k].item(), rel=1e-6)


def test_offline_kd_through_the_cli_and_what_it_refuses(shards, tmp_path):
    out = tmp_path / "okd.safetensors"
    r = dpl("distill", "--labels", shards["soft"], "--alpha", "1", "--loss", "dkd", *ONE_EPOCH, "-o", out)
    assert r.code == 0, r
    meta = artifacts.read_header(out).meta
    assert meta["distill"]["true_labels"] and {"ce", "kd", "acc"} <= set(history(out)[0])
    assert_refused(dpl("distill", "--labels", shards["soft"], "--alpha", "1", "--labeled-per-class", "10", "-o",
                       tmp_path / "x.safetensors"), "--alpha with --labels", "no partition")
    assert_refused(dpl("distill", "--labels", shards["soft"], "--alpha", "1", "--unlabeled-weight", "2", "-o",
                       tmp_path / "x.safetensors"), "drop --unlabeled-weight")
    assert not (tmp_path / "x.safetensors").exists()
