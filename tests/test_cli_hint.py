import json
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import assert_refused, dpl, write_imagefolder
from dpl.core import DplError, artifacts, models
from dpl.core.models import make_regressor
from dpl.core.engine.train import seed_everything


@pytest.fixture(scope="module")
def stage1(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("hint") / "stage1.safetensors"
    r = dpl("hint", "--teacher", teacher, "--arch", "fitnet-thin", "--hint-layer", "stages.1.0",
            "--guided-layer", "stages.1.5", "--epochs", "4", "-o", out)
    assert r.code == 0, r
    return out


def test_stage1_lowers_the_hint_loss_and_records_the_layers(stage1, teacher):
    meta = json.loads(dpl("info", stage1, "--json").stdout)
    assert meta["metrics"]["hint_loss"] < 0.7 * meta["metrics"]["hint_loss_first_epoch"]
    assert meta["hint"]["hint_layer"] == "stages.1.0" and meta["hint"]["guided_layer"] == "stages.1.5"
    assert meta["hint"]["regressor"] == "Conv2d"
    assert meta["parents"][0] == {"role": "teacher", "path": str(teacher), "sha256": artifacts.sha256_file(teacher)}
    ckpt = artifacts.load_checkpoint(stage1)
    regressor = {k[len("regressor."):]: v for k, v in ckpt.objective_state().items() if k.startswith("regressor.")}
    assert regressor["weight"].shape[:2] == (32, 24)           # teacher channels x student channels
    assert not any(k.startswith(("regressor.", "objective.")) for k in ckpt.model_state())


def test_stage1_trains_only_up_to_the_guided_layer(stage1):
    trained = artifacts.load_checkpoint(stage1)
    seed_everything(0)                                          # the run's seed: the same initial weights
    fresh = models.build(trained.arch).state_dict()
    state = trained.model_state()
    assert not torch.equal(state["stages.0.0.weight"], fresh["stages.0.0.weight"])     # before: trained
    for key in ("stages.2.0.weight", "stages.2.1.running_mean", "head.fc.weight"):    # after: untouched
        assert torch.equal(state[key], fresh[key]), key


def test_stage2_distill_from_the_stage1_student(stage1, teacher, tmp_path):
    out = tmp_path / "s2.safetensors"
    r = dpl("distill", "--init", stage1, "--teacher", teacher, "--arch", "fitnet-thin", "--tau", "4",
            "--epochs", "2", "-o", out)
    assert r.code == 0, r
    roles = [p["role"] for p in json.loads(dpl("info", out, "--json").stdout)["parents"]]
    assert roles == ["init", "teacher"]


def test_default_layers_are_the_middle_of_each_network(teacher, tmp_path):
    out = tmp_path / "h.safetensors"
    assert dpl("hint", "--teacher", teacher, "--arch", "resnet20", "--epochs", "1", "-o", out).code == 0
    hint = json.loads(dpl("info", out, "--json").stdout)["hint"]
    assert hint["hint_layer"] == "stages.1.0"          # cnn-s has blocks stages.0.0, 1.0, 2.0
    assert hint["guided_layer"] == "stages.1.1"        # resnet20 has 9 blocks


@pytest.mark.parametrize("student,teacher,kind,out_shape", [
    ((24, 8, 8), (32, 4, 4), nn.Conv2d, (32, 4, 4)),
    ((16, 4, 4), (32, 7, 7), nn.ConvTranspose2d, (32, 7, 7)),
    ((64,), (128,), nn.Linear, (128,)),
    ((8, 2, 2), (10,), nn.Sequential, (10,)),
])
def test_regressor_shapes(student, teacher, kind, out_shape):
    regressor = make_regressor(student, teacher)
    assert isinstance(regressor, kind)
    assert regressor(torch.randn(3, *student)).shape == (3, *out_shape)
    if kind is nn.Conv2d:
        assert regressor.kernel_size == (5, 5)   # 8 - 4 + 1: the paper's small convolutional regressor


def test_unknown_layer_lists_valid_paths(teacher, tmp_path):
    out = tmp_path / "h.safetensors"
    assert_refused(dpl("hint", "--teacher", teacher, "--hint-layer", "stages.7", "-o", out), "no layer 'stages.7'", "stem")
    assert_refused(dpl("hint", "--teacher", teacher, "--guided-layer", "nope", "-o", out), "no layer 'nope'")
    assert not out.exists()


def test_layer_without_tensor_output_is_refused():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    model = nn.Sequential(nn.Conv2d(1, 2, 3), Pair())
    with pytest.raises(DplError, match="layer '1' does not output a tensor"):
        models.Taps(model, ["1"], stop=True).tensor(torch.zeros(1, 1, 5, 5), "1")


def test_teacher_for_other_input_is_refused(teacher, tmp_path):
    root = write_imagefolder(tmp_path / "imgs", size=12, classes=[str(i) for i in range(10)], per_class=2)
    out = tmp_path / "h.safetensors"
    # image files are decoded at the teacher's size unless --resize says otherwise
    assert_refused(dpl("hint", "--teacher", teacher, "--data", f"imagefolder:{root}", "--resize", "12", "-o", out),
                   "takes 1x8x8 images", "1x12x12")
    assert not out.exists()


def test_fitnets_makefile_prints_the_three_students_and_passes_the_training_options(tmp_path):
    recipe = Path(__file__).parents[1] / "recipes" / "fitnets"
    out = tmp_path / "fit"
    args = ["make", "-C", str(recipe), f"OUT={out}", "TEACHER=cnn-s", "TEACHER_EPOCHS=2", "EPOCHS=2", "HINT_EPOCHS=1",
            "SEEDS=1", "STUDENT=fitnet-thin:depth=5,width=4,bn=0",
            "TRAIN_OPTS=--optimizer adamw --lr 0.002 --batch-size 64", "HINT_OPTS=--lr 0.004"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    rows = {line.split()[0]: line.split() for line in first.stdout.splitlines() if line.split()}
    for kind in ("alone", "kd", "hint-kd"):
        assert rows[kind][1] == "fitnet-thin" and rows[kind][3] == "1"          # arch, runs
    params = {rows[k][2] for k in ("alone", "kd", "hint-kd")}
    assert len(params) == 1                                                     # the same student, three ways
    for name, epochs in (("student-alone-seed1", 2), ("student-kd-seed1", 2), ("student-hint-kd-seed1", 1)):
        train = json.loads(dpl("info", out / f"{name}.safetensors", "--json").stdout)["train"]
        assert (train["optimizer"], train["lr"], train["batch_size"], train["epochs"]) == ("adamw", 0.002, 64, epochs)
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and not [l for l in again.stdout.splitlines() if " -o " in l]   # no command ran
