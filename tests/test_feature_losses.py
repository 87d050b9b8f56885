"""Feature distillation (dpl distill --feature-loss with a live teacher): the losses on hand-made tensors, then
end to end on digits with cnn-s students."""

import json
import shutil

import pytest
import torch
from torch import nn

from conftest import assert_refused, dpl
from dpl.core import DplError, artifacts, losses, models
from dpl.core.methods import features

RELATIONAL = ("sp", "pkt", "rkd")


def _maps(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- the losses ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["at", "sp", "pkt", "rkd"])
def test_a_feature_loss_is_zero_when_the_student_matches_and_positive_otherwise(name):
    fn = losses.FEATURE_LOSSES[name]
    t = _maps(8, 16, 4, 4)
    assert abs(float(fn(t.clone(), t))) < 1e-6
    s = _maps(8, 16, 4, 4, seed=1).requires_grad_()
    value = fn(s, t)
    assert value.dtype == torch.float32 and float(value.detach()) > 1e-4
    value.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_hint_with_an_identity_regressor_is_zero():
    t = _maps(4, 8, 3, 3)
    assert float(losses.feature_hint(nn.Identity()(t.clone()), t)) == 0
    assert float(losses.feature_hint(t + 1, t)) == pytest.approx(0.5)


def test_attention_transfer_ignores_channels_and_scale_and_pools_the_larger_map():
    t = _maps(4, 64, 4, 4)
    assert float(losses.attention_transfer(3 * t, t)) < 1e-6                         # each map is L2-normalised
    assert float(losses.attention_transfer(_maps(4, 16, 8, 8, seed=2), t)) > 0       # 8x8 pooled to 4x4
    with pytest.raises(DplError, match="feature maps"):
        losses.attention_transfer(_maps(4, 16), _maps(4, 16))


def test_relational_losses_in_the_batch_sizes_they_see():
    s, t = _maps(16, 32, seed=1), _maps(16, 32, seed=2)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    for name in RELATIONAL:                           # which sample is which row does not matter
        fn = losses.FEATURE_LOSSES[name]
        assert float(fn(s[order], t[order])) == pytest.approx(float(fn(s, t)), rel=1e-4), name
        with pytest.raises(DplError, match="at least 2"):
            fn(s[:1], t[:1])
    # sp and pkt average over the B x B pairs, so the same samples twice over halve them (the 1/B of their
    # docstrings); rkd's distances are divided by their mean, and stay of the same size.
    for name in ("sp", "pkt"):
        fn = losses.FEATURE_LOSSES[name]
        assert float(fn(s.repeat(2, 1), t.repeat(2, 1))) == pytest.approx(float(fn(s, t)) / 2, rel=1e-3), name
    assert 0.5 < float(losses.rkd(s.repeat(2, 1), t.repeat(2, 1))) / float(losses.rkd(s, t)) < 2


def test_crd_prefers_aligned_embeddings_and_queued_negatives_count_unless_excluded():
    t = _maps(8, 16)
    aligned, unrelated = losses.crd(t + 0.01 * _maps(8, 16, seed=1), t, 0.07), losses.crd(_maps(8, 16, seed=2), t, 0.07)
    assert float(aligned) < 0.1 < float(unrelated)
    s, queue = _maps(8, 16, seed=3), torch.nn.functional.normalize(_maps(32, 16, seed=4), dim=1)
    in_batch = losses.crd(s, t, 0.5)
    assert float(losses.crd(s, t, 0.5, queue)) > float(in_batch)
    excluded = torch.ones(8, 32, dtype=torch.bool)
    assert float(losses.crd(s, t, 0.5, queue, excluded)) == pytest.approx(float(in_batch), rel=1e-6)


@pytest.mark.parametrize("name", ["at", "sp", "pkt", "rkd", "crd"])
def test_feature_losses_compute_in_float32_under_bf16_autocast(name):
    fn = losses.FEATURE_LOSSES[name]
    args = (0.07,) if name == "crd" else ()
    s, t = _maps(8, 16, 4, 4, seed=1).bfloat16(), _maps(8, 16, 4, 4).bfloat16()
    if name == "crd":
        s, t = s.flatten(1), t.flatten(1)
    plain = fn(s, t, *args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = fn(s, t, *args)
    assert autocast.dtype == torch.float32 and float(autocast) == float(plain)


def test_the_crd_queue_keeps_the_latest_and_masks_a_sample_s_own_embedding():
    queue = features.Queue(4, 2, torch.device("cpu"))
    queue.push(torch.eye(2).repeat(3, 1)[:5], torch.arange(5))          # 5 into 4 slots: sample 0 overwritten
    assert sorted(queue.ids.tolist()) == [1, 2, 3, 4]
    _, exclude = queue.negatives(torch.tensor([3, 9]))
    assert exclude.sum(1).tolist() == [1, 0]
    restored = features.Queue(4, 2, torch.device("cpu"))
    restored.load_state_dict(queue.state_dict())
    assert torch.equal(restored.ids, queue.ids) and restored.position == queue.position == 0     # next: the oldest, sample 1


def test_default_layers_pair_stage_outputs_by_count():
    small = models.build(models.arch_spec("cnn-s", num_classes=10, in_channels=1, image_size=8))
    large = models.build(models.arch_spec("resnet18", num_classes=10, in_channels=1, image_size=8))
    assert features.stage_outputs(small, (1, 8, 8)) == ["stages.0.0", "stages.1.0", "stages.2.0"]
    s, t = features.default_layers("at", small, large, (1, 8, 8), (), ())
    assert s == ["stages.0.0", "stages.1.0", "stages.2.0"] and t == ["layer1.1", "layer3.1", "layer4.1"]
    assert features.default_layers("sp", small, large, (1, 8, 8), (), ()) == (["stages.2.0"], ["layer4.1"])
    assert features.default_layers("crd", small, large, (1, 8, 8), (), ()) == ([models.FEATURES], [models.FEATURES])


# ---- through the CLI ---------------------------------------------------------------------------------------

def _distill(teacher, out, *extra):
    return dpl("distill", "--teacher", teacher, "--arch", "cnn-s", "--epochs", "1", "--device", "cpu", "-o", out, *extra)


HEADS = {"hint": {"regressor.0.weight", "regressor.0.bias"},
         "crd": {"embed_student.1.weight", "embed_student.1.bias", "embed_teacher.1.weight", "embed_teacher.1.bias"}}


@pytest.fixture(scope="module")
def trained(teacher, tmp_path_factory):
    """One student per loss, KD off (--alpha 0): RepDistiller's rows."""
    folder = tmp_path_factory.mktemp("feature")
    outs = {}
    for name in losses.FEATURE_LOSSES:
        outs[name] = folder / f"{name}.safetensors"
        r = _distill(teacher, outs[name], "--alpha", "0", "--feature-loss", name)
        assert r.code == 0, (name, r)
    return outs


@pytest.mark.parametrize("name", list(losses.FEATURE_LOSSES))
def test_each_feature_loss_trains_and_the_checkpoint_records_it(trained, name):
    ckpt = artifacts.load_checkpoint(trained[name])
    record = ckpt.meta["distill"]["features"]
    assert record["loss"] == name and record["weight"] == features.DEFAULT_WEIGHTS[name]
    assert len(record["student_layers"]) == len(record["teacher_layers"]) >= 1
    epoch = ckpt.meta["history"][-1]
    assert epoch[name] > 0 and "kd" not in epoch and epoch["loss"] == pytest.approx(epoch["ce"] + epoch[name], rel=1e-4)
    assert set(ckpt.objective_state()) == HEADS.get(name, set())
    assert not any(k.startswith(("regressor", "embed_")) for k in ckpt.model_state())


def test_layers_by_path_and_kd_on(teacher, tmp_path):
    out = tmp_path / "at.safetensors"
    r = _distill(teacher, out, "--feature-loss", "at", "--feature-weight", "50", "--student-layer", "stages.1.0",
                 "--teacher-layer", "stages.2.0", "--student-layer", "stages.2.0", "--teacher-layer", "stages.2.0")
    assert r.code == 0, r
    meta = artifacts.read_header(out).meta
    record = meta["distill"]["features"]
    assert record["student_layers"] == ["stages.1.0", "stages.2.0"] and record["weight"] == 50
    assert record["student_shapes"][0] == [32, 4, 4] and record["teacher_shapes"][0] == [64, 2, 2]
    assert {"ce", "kd", "at"} <= set(meta["history"][-1])               # --alpha 1 by default: CE + KD + AT


def test_crd_on_a_partition_from_a_feature_student_and_its_queue_in_the_resume_state(teacher, trained, tmp_path):
    # Pseudo-labeled rows (the partition's unlabeled part, labeled live) get the feature term too, the queue
    # naming their samples after the labeled ones; --init takes a feature student's model, not its heads.
    run = ("--init", trained["crd"], "--labeled-per-class", "10", "--feature-loss", "crd", "--crd-queue", "512",
           "--student-layer", "stages.2.0", "--epochs", "2", "--save-every", "1")
    whole = tmp_path / "whole.safetensors"
    r = _distill(teacher, whole, *run, "--keep-state")          # keeps the state written after epoch 1
    assert r.code == 0, r
    meta = artifacts.read_header(whole).meta
    record = meta["distill"]["features"]
    assert record["crd_queue"] == 512 and record["student_shapes"] == [[64, 2, 2]]
    assert {"ce", "kd", "pseudo", "crd"} <= set(meta["history"][-1])
    assert [p["role"] for p in meta["parents"]] == ["init", "teacher"]
    saved = whole.with_name(whole.name + ".resume")
    state = artifacts.load_tensors(artifacts.read_header(saved, kind="resume"))
    assert state["objective.crd_queue"].shape == (512, 128) and (state["objective.crd_queue_ids"] >= 0).all()
    resumed = tmp_path / "resumed.safetensors"
    shutil.copy(saved, resumed.with_name(resumed.name + ".resume"))
    r = _distill(teacher, resumed, *run, "--resume")
    assert r.code == 0, r
    a, b = artifacts.load_checkpoint(whole).tensors, artifacts.load_checkpoint(resumed).tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)     # heads included


def test_feature_options_that_cannot_apply_are_refused(teacher, trained, tmp_path):
    out = tmp_path / "s.safetensors"
    labels = tmp_path / "labels"
    assert dpl("label", teacher, "-o", labels).code == 0
    assert_refused(dpl("distill", "--labels", labels, "--feature-loss", "at", "-o", out), "give --teacher")
    assert_refused(dpl("distill", "--teacher", teacher, "--teacher", trained["at"], "--feature-loss", "rkd", "-o", out),
                   "one --teacher", "not 2")
    assert_refused(_distill(teacher, out, "--feature-loss", "nope"), "unknown feature loss", "at, rkd")
    assert_refused(_distill(teacher, out, "--feature-loss", "rkd", "--student-layer", "stages.9"), "no layer 'stages.9'")
    assert_refused(_distill(teacher, out, "--feature-loss", "at", "--crd-queue", "16"), "--crd-queue", "--feature-loss at")
    assert_refused(_distill(teacher, out, "--feature-weight", "3"), "--feature-weight", "give --feature-loss")
    assert_refused(_distill(teacher, out, "--feature-loss", "at", "--student-layer", "features"), "feature maps")
    assert_refused(_distill(teacher, out, "--feature-loss", "pkt", "--student-layer", "stages.1.0",
                            "--student-layer", "stages.2.0"), "2 --student-layer and 1 --teacher-layer")
    assert_refused(_distill(teacher, out, "--feature-loss", "sp", "--batch-size", "1"), "at least 2")
    assert not out.exists() and not out.with_name(out.name + ".resume").exists()


def test_feature_loss_choices_come_from_the_registry():
    r = dpl("distill", "--help")
    assert all(f"{name}:" in r.stdout or name in r.stdout for name in losses.FEATURE_LOSSES)
    assert json.dumps(sorted(features.DEFAULT_WEIGHTS)) == json.dumps(sorted(losses.FEATURE_LOSSES))
