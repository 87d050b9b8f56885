"""dpl pack never loses data: every check runs before anything is written, the output is written whole under a
temporary name and swapped in, so a refusal, a crash or a SIGKILL at any moment leaves an earlier pack's output
byte for byte as it was, or the new output complete."""

import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_refused, dpl
from dpl.core.data import images


def _photos(root: Path, per_class: int, size: int = 16, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / name / f"{i:04d}.png")
    return root


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def test_a_repack_replaces_the_shards_whole(tmp_path):
    src, out = _photos(tmp_path / "photos", 30), tmp_path / "shards"
    assert dpl("pack", src, "--shard-size", "7", "-o", out).code == 0
    assert len(list(out.glob("shard-*.tar"))) == 9
    assert dpl("pack", src, "--shard-size", "40", "-o", out, "--force").code == 0
    assert sorted(p.name for p in out.iterdir()) == ["classes.txt", "shard-000000.tar", "shard-000001.tar"]
    assert len(images.list_shards(out)) == 60
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # no temporary folder left


def test_a_refused_repack_leaves_the_earlier_shards_as_they_were(tmp_path):
    src, out = _photos(tmp_path / "photos", 5), tmp_path / "shards"
    assert dpl("pack", src, "-o", out).code == 0
    before = _contents(out)
    (src / "cat" / "0000.jpg").write_bytes((src / "cat" / "0000.png").read_bytes())     # key cat/0000 twice
    assert_refused(dpl("pack", src, "-o", out, "--force"), "cat/0000", "rename one")
    assert _contents(out) == before
    assert_refused(dpl("pack", src, "-o", tmp_path / "new"), "cat/0000")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("where", ["same", "inside", "deeper"])
def test_the_output_is_never_the_source_or_inside_it(tmp_path, where):
    src = _photos(tmp_path / "photos", 3)
    out = {"same": src, "inside": src / "shards", "deeper": src / "cat" / "shards"}[where]
    before = sorted((p.relative_to(src), p.stat().st_size, p.stat().st_mtime_ns) for p in src.rglob("*"))
    assert_refused(dpl("pack", src, "-o", out, "--force"), "inside the folder it packs")
    assert sorted((p.relative_to(src), p.stat().st_size, p.stat().st_mtime_ns) for p in src.rglob("*")) == before


def test_an_output_holding_other_files_is_refused_even_with_force(tmp_path):
    src, out = _photos(tmp_path / "photos", 3), tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert_refused(dpl("pack", src, "-o", out, "--force"), "notes.txt", "not shards of dpl pack")
    assert _contents(out) == {"notes.txt": b"keep me"}


def test_pack_killed_at_random_moments_keeps_the_old_shards_or_the_new_ones_whole(tmp_path):
    """SIGKILL at 20 random moments of `dpl pack --force` over an earlier pack's output (run in a forked child,
    so each kill costs the pack's own time, not an interpreter's start): after each, the output is the old
    shards byte for byte, or the new ones complete."""
    src, out = _photos(tmp_path / "photos", 400, size=24), tmp_path / "shards"
    args = {size: ["pack", src, "--shard-size", size, "-o", out, "--force"] for size in ("40", "25")}
    assert dpl(*args["40"]).code == 0
    packs = {"40": _contents(out)}

    def run_in_child(size: str, kill_after: float | None) -> int:
        pid = os.fork()
        if pid == 0:
            try:
                os._exit(dpl(*args[size]).code)
            finally:
                os._exit(99)
        if kill_after is not None:
            time.sleep(kill_after)
            os.kill(pid, signal.SIGKILL)
        return os.waitpid(pid, 0)[1]

    start = time.perf_counter()                  # how long a whole pack takes here, to spread the kills over
    assert run_in_child("25", None) == 0
    whole = time.perf_counter() - start
    packs["25"] = _contents(out)
    assert len(packs["40"]) == 21 and len(packs["25"]) == 33
    rng, outcomes = random.Random(0), {"old": 0, "new": 0}
    for kill in range(20):
        before = "40" if kill % 2 == 0 else "25"     # both directions: 40 -> 25 and 25 -> 40
        after = "25" if before == "40" else "40"
        if _contents(out) != packs[before]:
            assert dpl(*args[before]).code == 0
        run_in_child(after, rng.uniform(0, whole * 1.2))
        found = _contents(out)
        assert found in (packs[before], packs[after]), f"kill {kill}: the output is neither pack whole"
        outcomes["old" if found == packs[before] else "new"] += 1
    assert outcomes["old"] > 0, outcomes          # some kills did land before the swap
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert all(".tmp-" in name or ".old-" in name for name in leftovers)


@pytest.mark.parametrize("cut", ["inside-a-member", "at-a-header", "inside-a-header"])
def test_a_shard_cut_short_keeps_the_images_before_the_cut_and_says_so(tmp_path, cut):
    import tarfile

    out = tmp_path / "shards"
    assert dpl("pack", _photos(tmp_path / "photos", 5), "-o", out).code == 0
    shard = out / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        fourth = tar.getmembers()[6]              # image, .cls, image, .cls, ...: the fourth image's member
    at = {"inside-a-member": fourth.offset_data + 10, "at-a-header": fourth.offset,
          "inside-a-header": fourth.offset + 100}[cut]
    shard.write_bytes(shard.read_bytes()[:at])
    listing = images.list_shards(out)
    assert len(listing) == 3 and listing.labels.tolist() == [0, 0, 0]
    assert len(listing.ignored) == 1 and str(shard) in listing.ignored[0] and "3 images" in listing.ignored[0]
    r = dpl("teach", "--data", f"tar:{out}", "--arch", "cnn-s", "--epochs", "1", "-o", tmp_path / "t.safetensors")
    assert r.code == 0 and "cut short" in r.stderr, r
