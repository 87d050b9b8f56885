"""--workers N: DataLoader workers gather the batches from host memory. The run must be the same run:
same batches, same noise, bit-identical weights, for every training command."""

import pytest
import torch

from conftest import assert_usage_error, dpl
from dpl.core import artifacts
from dpl.core.engine import train

PER_CLASS = ["--labeled-per-class", "10"]


@pytest.fixture(scope="module")
def labels(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("wl") / "labels"
    assert dpl("label", teacher, *PER_CLASS, "-o", out).code == 0
    return out


COMMANDS = {
    "teach": lambda t, l: ["teach", "--arch", "cnn-s", "--epochs", "1", "--randaugment", "2,9"],
    "distill": lambda t, l: ["distill", "--labels", l, *PER_CLASS, "--min-confidence", "0.5", "--arch", "cnn-s",
                             "--epochs", "1", "--batch-size", "16", "--dropout", "0.2"],
    "online-kd": lambda t, l: ["distill", "--teacher", t, "--arch", "cnn-s", "--epochs", "1", "--tau", "4"],
    "hint": lambda t, l: ["hint", "--teacher", t, "--arch", "fitnet-thin", "--epochs", "1"],
    "pretrain": lambda t, l: ["pretrain", "--task", "rotation", "--arch", "cnn-s", "--epochs", "1"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_workers_give_the_same_weights(command, teacher, labels, tmp_path):
    weights = []
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}.safetensors"
        r = dpl(*COMMANDS[command](teacher, labels), "--workers", workers, "--device", "cpu", "-o", out)
        assert r.code == 0, r
        weights.append(artifacts.load_checkpoint(out).model_state())
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_feed_keeps_order_and_moves_nothing_it_need_not():
    images = torch.arange(40, dtype=torch.uint8).view(10, 1, 2, 2)
    rt = train.Runtime(torch.device("cpu"), workers=2)
    feed = rt.place(images)
    assert feed.workers == 2 and feed.tensors[0] is images
    got = list(feed([torch.tensor([3, 1]), torch.tensor([9]), torch.tensor([0, 2, 4])], train.take_rows))
    assert [b.tolist() for b, _ in got] == [[3, 1], [9], [0, 2, 4]]
    for b, x in got:
        assert torch.equal(x, images[b])
    assert train.runtime("cpu").loader_workers(10**12) == 0      # CPU: the images are where the model is


def test_negative_workers_are_refused(tmp_path):
    assert_usage_error(dpl("teach", "--workers", "-1", "-o", tmp_path / "x.safetensors"), "--workers")
