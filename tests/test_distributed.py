import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_refused, dpl, write_photos
from dpl.core import artifacts

BIN = Path(sys.executable).parent


def torchrun(*args, nproc=2, timeout=600):
    cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", str(BIN / "dpl"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def same_labels(a: Path, b: Path) -> None:
    x, y = artifacts.read_labels(a), artifacts.read_labels(b)
    assert torch.equal(x.index, y.index) and torch.equal(x.label, y.label)
    assert torch.allclose(x.probs.float(), y.probs.float(), atol=1e-3)
    assert torch.allclose(x.confidence, y.confidence, atol=1e-5)


@pytest.fixture(scope="module")
def one_rank_labels(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels") / "one"
    assert dpl("label", teacher, "--labeled-per-class", "10", "--shard-size", "200", "-o", out).code == 0
    return out


def test_teach_with_two_gloo_ranks_matches_one_rank(tmp_path):
    args = ["teach", "--arch", "cnn-s", "--epochs", "15", "--device", "cpu"]
    two = torchrun(*args, "--batch-size", "64", "-o", tmp_path / "two.safetensors")
    assert two.returncode == 0, two.stderr
    assert two.stdout.strip() == str(tmp_path / "two.safetensors")     # rank 0 alone prints
    assert dpl(*args, "--batch-size", "128", "-o", tmp_path / "one.safetensors").code == 0
    acc = {n: json.loads(dpl("eval", tmp_path / f"{n}.safetensors", "--json").stdout)["top1"] for n in ("one", "two")}
    assert acc["two"] > 0.9 and abs(acc["two"] - acc["one"]) < 0.04, acc
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.metrics.jsonl", "one.safetensors",
                                                          "two.metrics.jsonl", "two.safetensors"]
    # rank 0 alone writes the metrics log: one line per epoch, not one per rank
    epochs = [json.loads(l)["epoch"] for l in (tmp_path / "two.metrics.jsonl").read_text().splitlines()
              if '"event": "epoch"' in l]
    assert epochs == list(range(1, 16))


def test_label_with_two_ranks_equals_one_rank(teacher, one_rank_labels, tmp_path):
    out = tmp_path / "two"
    r = torchrun("label", teacher, "--labeled-per-class", "10", "--shard-size", "200", "-o", out)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert {n[:12] for n in names} == {"shard-00000-", "shard-00001-"}
    assert artifacts.read_labels(out).meta["world"] == 2
    same_labels(out, one_rank_labels)


def test_label_over_tar_shards_with_two_ranks_equals_one_process(tmp_path):
    """Each rank takes its own contiguous part of the shards' samples: every key labeled once, as by one process."""
    write_photos(tmp_path / "labeled", per_class=4)
    write_photos(tmp_path / "pool", per_class=7, start=4, flat=True)
    teacher = tmp_path / "t.safetensors"
    assert dpl("teach", "--data", f"imagefolder:{tmp_path / 'labeled'}", "--resize", "12", "--arch", "cnn-s",
               "--epochs", "1", "--device", "cpu", "-o", teacher).code == 0
    assert dpl("pack", tmp_path / "pool", "--shard-size", "25", "-o", tmp_path / "shards").code == 0
    spec = f"tar:{tmp_path / 'shards'}"
    assert dpl("label", teacher, "--data", spec, "--stream", "--device", "cpu", "-o", tmp_path / "one").code == 0
    r = torchrun("label", teacher, "--data", spec, "--stream", "--workers", "2", "--batch-size", "16",
                 "--shard-size", "20", "--device", "cpu", "-o", tmp_path / "two")
    assert r.returncode == 0, r.stderr
    one, two = artifacts.read_labels(tmp_path / "one"), artifacts.read_labels(tmp_path / "two")
    assert two.meta["world"] == 2 and len(two) == len(one) == 70
    assert len(set(two.keys.tolist())) == 70 and set(two.keys.tolist()) == set(one.keys.tolist())
    by_key = dict(zip(one.keys.tolist(), one.probs.float()))
    assert all(torch.allclose(by_key[k], p.float(), atol=1e-3) for k, p in zip(two.keys.tolist(), two.probs))


def test_independent_shard_jobs_fill_one_folder(teacher, one_rank_labels, tmp_path):
    out = tmp_path / "jobs"
    base = ["label", teacher, "--labeled-per-class", "10", "--shard-size", "200", "-o", out]
    assert dpl(*base, "--shard", "1/3").code == 0
    assert_refused(dpl("eval", out), "incomplete label folder")
    partial = json.loads(dpl("eval", out, "--allow-partial", "--json").stdout)
    assert 0 < partial["n"] < 1252
    assert dpl(*base, "--shard", "0/3").code == 0
    assert dpl(*base, "--shard", "2/3").code == 0
    same_labels(out, one_rank_labels)
    indices = artifacts.read_labels(out).index
    assert len(indices) == len(set(indices.tolist())) == 1252       # every sample once, no padding


def test_label_resume_skips_complete_shards(teacher, one_rank_labels, tmp_path):
    out = tmp_path / "resumed"
    base = ["label", teacher, "--labeled-per-class", "10", "--shard-size", "200", "-o", out]
    assert dpl(*base).code == 0
    (out / "shard-00000-00003.safetensors").unlink()
    assert_refused(dpl("distill", "--labels", out, "-o", tmp_path / "s.safetensors"), "incomplete", "00003")
    assert_refused(dpl(*base), "exists", "--resume")
    r = dpl(*base, "--resume", "--json")
    assert r.code == 0, r
    done = json.loads(r.stdout)
    assert done["written"] == 1 and done["kept"] == done["shards"] - 1 == 6
    same_labels(out, one_rank_labels)


def test_shard_option_is_checked(teacher, tmp_path):
    for bad in ("3/3", "x", "1/0"):
        assert_refused(dpl("label", teacher, "--shard", bad, "-o", tmp_path / "l"), "--shard")
    assert not (tmp_path / "l").exists()


def test_resume_under_two_ranks_continues_each_rank_s_noise(tmp_path):
    """Resuming a 2-rank run from its epoch-1 state gives the uninterrupted run's weights bit for bit:
    each rank gets back its own RNG state (its own augmentation noise), not rank 0's."""
    args = ["teach", "--arch", "cnn-s", "--epochs", "2", "--batch-size", "64", "--randaugment", "2,9", "--device", "cpu"]
    whole = tmp_path / "whole.safetensors"
    r = torchrun(*args, "--keep-state", "-o", whole)
    assert r.returncode == 0, r.stderr
    state = artifacts.read_header(whole.with_name(whole.name + ".resume"), kind="resume")
    assert state.meta["position"]["epoch"] == 1
    resumed = tmp_path / "resumed.safetensors"
    resumed.with_name(resumed.name + ".resume").write_bytes(state.path.read_bytes())
    r = torchrun(*args, "--resume", "-o", resumed)
    assert r.returncode == 0, r.stderr
    a, b = artifacts.load_checkpoint(whole).model_state(), artifacts.load_checkpoint(resumed).model_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
