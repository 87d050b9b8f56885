"""--ema: the exponential moving average of the weights is what validation measures and the checkpoint holds."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import assert_refused, dpl
from dpl.core import artifacts, data
from dpl.core.reporting import evaluate
from dpl.core.engine import train
from test_resume import log_without_timing, max_weight_difference, wait_for

TEACH = ["teach", "--data", "digits", "--arch", "cnn-s", "--epochs", "2", "--val-per-class", "4", "--keep", "best",
         "--log-every", "5", "--lr", "0.2", "--device", "cpu"]


def test_the_decay_ramps_up_as_tensorflow_num_updates_then_holds():
    assert train.ema_decay(0.9, 0) == 1 / 10
    assert train.ema_decay(0.9, 5) == 6 / 15
    assert train.ema_decay(0.9, 80) == 81 / 90 == 0.9
    assert train.ema_decay(0.9, 81) == 0.9
    assert train.ema_decay(0.999, 930) == 931 / 940
    assert train.ema_decay(0.999, 8991) == 0.999


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_fit_keeps_the_formula_average_of_every_step_validates_it_and_ends_with_it():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    gen = torch.Generator().manual_seed(1)
    data_ = [(torch.randn(8, 3, generator=gen), torch.randint(0, 2, (8,), generator=gen)) for _ in range(8)]
    seen, epoch_ends, validated = [], [], []

    def objective(batch):
        seen.append(snapshot(module))          # the weights after the step before
        x, y = batch
        return {"ce": nn.functional.cross_entropy(module(x), y)}, {}

    def measure():
        validated.append(snapshot(module))
        return {"top1": [0.9, 0.5][len(validated) - 1], "nll": 1.0, "ece": 0.0}

    def progress(event):
        if event["event"] == "epoch":
            epoch_ends.append(snapshot(module))

    start = snapshot(module)
    cfg = train.TrainConfig(epochs=2, batch_size=8, lr=0.1, warmup_epochs=0, ema=0.5, log_every=1)
    train.fit(module, objective, lambda epoch: iter(data_), len(data_), cfg, train.Runtime(torch.device("cpu")),
              progress, validation=train.Validation(measure, keep_best=True))

    # Validation swapped the average in and the raw weights back: the next step trained on the raw weights.
    assert all(torch.equal(epoch_ends[0][k], seen[len(data_)][k]) for k in start)
    raw_after = seen[1:] + [epoch_ends[1]]            # the raw weights after each of the 16 steps
    floats = [k for k, v in start.items() if v.is_floating_point()]
    assert "1.running_mean" in floats and "1.running_var" in floats     # batch-norm statistics are averaged too
    ema, expected = {k: start[k].double() for k in floats}, []
    for t, raw in enumerate(raw_after):
        d = min(0.5, (1 + t) / (10 + t))               # ramped for t < 8, then 0.5
        ema = {k: d * ema[k] + (1 - d) * raw[k].double() for k in floats}
        expected.append(ema)
    for at, measured in zip((len(data_) - 1, 2 * len(data_) - 1), validated):
        assert max(float((measured[k].double() - expected[at][k]).abs().max()) for k in floats) < 1e-6
        assert not torch.equal(measured["0.weight"], raw_after[at]["0.weight"])
    # --keep best: the first epoch's average (validated 0.9 > 0.5), not the last's nor the raw weights.
    final = module.state_dict()
    assert max(float((final[k].double() - expected[len(data_) - 1][k]).abs().max()) for k in floats) < 1e-6
    assert final["1.num_batches_tracked"] == 8        # integer buffers are the module's own


def test_without_keep_best_fit_ends_with_the_last_average():
    torch.manual_seed(0)
    module = nn.Linear(2, 1)
    w0 = module.weight.detach().clone()
    x = torch.ones(1, 2)
    cfg = train.TrainConfig(epochs=1, batch_size=1, lr=0.1, momentum=0.0, weight_decay=0.0, warmup_epochs=0, ema=0.9)
    train.fit(module, lambda _: ({"y": module(x).sum()}, {}), lambda epoch: iter([None]), 1, cfg,
              train.Runtime(torch.device("cpu")))
    raw = w0 - 0.1 * x                                 # one SGD step on d(w.x + b)/dw = x
    assert torch.allclose(module.weight.detach(), 0.1 * w0 + 0.9 * raw, atol=1e-7)    # decay 0.1 at step 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ema")
    for name, extra in (("ema", ["--ema", "0.9"]), ("plain", [])):
        r = dpl(*TEACH, *extra, "-o", folder / f"{name}.safetensors")
        assert r.code == 0, r
    return folder / "ema.safetensors", folder / "plain.safetensors"


def epoch_records(path):
    return [r for r in log_without_timing(path) if r["event"] == "epoch"]


def test_teach_writes_the_average_validated_and_recorded(runs):
    ema, plain = runs
    # The average changes neither the training trajectory nor its noise: the training figures are equal.
    train_figures = lambda path: [{k: r[k] for k in ("loss", "acc", "lr")} for r in epoch_records(path)]  # noqa: E731
    assert train_figures(ema) == train_figures(plain)
    assert [r["val_top1"] for r in epoch_records(ema)] != [r["val_top1"] for r in epoch_records(plain)] or \
        [r["val_nll"] for r in epoch_records(ema)] != [r["val_nll"] for r in epoch_records(plain)]
    assert max_weight_difference(ema, plain) > 1e-3
    meta = artifacts.read_header(ema, kind="checkpoint").meta
    assert meta["train"]["ema"] == 0.9 and meta["weights"]["ema"] == 0.9
    plain_meta = artifacts.read_header(plain, kind="checkpoint").meta
    assert "ema" not in plain_meta["train"] and "ema" not in plain_meta["weights"]
    assert json.loads(dpl("info", ema, "--json").stdout)["train"]["ema"] == 0.9
    # The raw weights are not kept: the checkpoint holds the model's tensors only.
    assert set(load_file(str(ema))) == set(load_file(str(plain)))
    # The weights written are the best epoch's average: they score its validation top-1 on the held-out samples.
    best = max(meta["history"], key=lambda h: (h["val_top1"], -h["epoch"]))
    _, val = data.hold_out(data.load("digits"), data.Holdout(per_class=4, seed=0))
    ckpt = artifacts.load_checkpoint(ema)
    logits = evaluate.predict(ckpt.build_model(), val.images, ckpt.input, train.runtime("cpu"))
    m = evaluate.classification_metrics(logits, val.labels, 10)
    assert m["top1"] == pytest.approx(best["val_top1"], abs=1e-6)
    assert m["nll"] == pytest.approx(best["val_nll"], rel=1e-4)


def start(out, *extra):
    exe = os.path.join(os.path.dirname(sys.executable), "dpl")
    run = [*TEACH, "--epochs", "3", "--randaugment", "2,9", "--ema", "0.9", "--log-every", "2"]
    return subprocess.Popen([exe, *run, *extra, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_sigterm_then_resume_continues_the_average_exactly(tmp_path):
    whole = tmp_path / "whole.safetensors"
    proc = start(whole)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    out, state = tmp_path / "t.safetensors", tmp_path / "t.safetensors.resume"
    proc = start(out, "--keep-state")
    wait_for(state, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    saved = artifacts.read_header(state, kind="resume")
    assert saved.meta["position"]["batch"] > 0        # stopped mid-epoch
    tensors = artifacts.load_tensors(saved)
    assert {k[len("ema."):] for k in tensors if k.startswith("ema.")} == \
        {k[len("module."):] for k in tensors if k.startswith("module.") and tensors[k].is_floating_point()}
    # Another decay is another run.
    assert_refused(dpl(*TEACH, "--epochs", "3", "--randaugment", "2,9", "--ema", "0.8", "--log-every", "2",
                       "--resume", "-o", out), "different run", "ema")
    resumed = start(out, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert max_weight_difference(out, whole) <= 1e-6
    assert log_without_timing(out) == log_without_timing(whole)


@pytest.mark.parametrize("decay", ["0", "1", "-0.5", "1.5"])
def test_a_decay_outside_0_1_is_refused_and_nothing_written(tmp_path, decay):
    out = tmp_path / "t.safetensors"
    assert_refused(dpl("teach", "--arch", "cnn-s", "--epochs", "1", "--ema", decay, "-o", out), "--ema", "(0, 1)")
    assert list(tmp_path.iterdir()) == []


def test_pretrain_takes_ema_and_records_it(tmp_path):
    out = tmp_path / "r.safetensors"
    r = dpl("pretrain", "--task", "rotation", "--epochs", "1", "--arch", "cnn-s", "--labeled-per-class", "20",
            "--part", "labeled", "--ema", "0.9", "-o", out)
    assert r.code == 0, r
    assert artifacts.read_header(out, kind="checkpoint").meta["train"]["ema"] == 0.9
