"""Fuzzing the artifact reader: mutated checkpoints and label shards end in success (a harmless mutation) or
in a DplError naming the file, never another exception, a crash or a hang.

The artifacts are made small by the test. Every case is counted; the module ends with one line,
"fuzz: N cases (...), K non-clean", on the terminal and in fuzz-summary.txt under pytest's base temp.
DPL_FUZZ_SCALE=10 runs ten times the cases; DPL_FUZZ_RANDOM=1 draws new ones instead of the same each run.
"""

import json
import os
import shutil
import signal
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_refused, dpl
from dpl.core import DplError, artifacts, data, models
from dpl.core.methods import label

SCALE = float(os.environ.get("DPL_FUZZ_SCALE", "1"))
CASE_SECONDS = 20          # a case that takes longer is a hang
STATS = Counter()


def fuzz(examples: int):
    return settings(max_examples=max(1, round(examples * SCALE)), deadline=None, database=None,
                    derandomize=not os.environ.get("DPL_FUZZ_RANDOM"),
                    suppress_health_check=list(HealthCheck), print_blob=False)


# ---- the artifacts ----------------------------------------------------------------------------------

def make_checkpoint(path: Path, num_classes: int = 10) -> None:
    spec = models.arch_spec("fitnet-thin:depth=3,width=2", num_classes=num_classes, in_channels=1, image_size=8)
    meta = {"arch": spec, "num_classes": num_classes, "classes": [str(c) for c in range(num_classes)],
            "input": artifacts.input_meta(1, 8, [0.3], [0.4]),
            "data": {"spec": "digits:train", "part": "all", "n": 1352, "fingerprint": "0" * 64},
            "parents": [{"role": "init", "path": str(path.parent / "absent.safetensors"), "sha256": "0" * 64}],
            "metrics": {"test_top1": 0.5}, "seed": 0, "command": ["dpl", "teach"]}
    artifacts.save_checkpoint(path, models.build(spec), meta)


def make_labels(folder: Path, mode: str, ds: data.Dataset | None = None, shards: int = 2) -> Path:
    """A label folder of `shards` shards, written as `dpl label` writes them: for `ds` (so distill accepts it),
    or 12 samples of 3 classes."""
    n, c = (len(ds), ds.num_classes) if ds is not None else (12, 3)
    probs = torch.rand(n, c, generator=torch.Generator().manual_seed(0)).softmax(1)
    opts = label.LabelOptions(mode=mode, topk=2 if mode == "topk" else None, tau=2.0)
    bounds = [n * i // shards for i in range(shards + 1)]
    described = ds.describe() if ds is not None else {"spec": "digits:train", "part": "unlabeled", "n": n,
                                                      "labeled_per_class": 1, "split_seed": 0, "fingerprint": "0" * 64}
    meta = {"teachers": [{"role": "teacher", "path": "absent.safetensors", "sha256": "0" * 64}], "data": described,
            "tau": opts.tau, "mode": opts.mode, "topk": opts.topk, "num_classes": c,
            "classes": [str(i) for i in range(c)], "total": n, "world": 1,
            "quality": {"accuracy": 0.5, "mean_confidence": 0.6, "n": n, "thresholds": []}}
    folder.mkdir(parents=True)
    for seq, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        label.write_shard(folder, meta, 0, seq, shards, label.shard_tensors(probs[lo:hi], lo, opts))
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Intact artifacts as bytes, and scratch places to write their mutations."""
    root = tmp_path_factory.mktemp("fuzz")
    make_checkpoint(root / "intact.safetensors")
    # One shard: metadata lies reach the deeper checks. Two: a lie in one shard makes a mixed folder.
    folders = [make_labels(root / f"{mode}-{n}", mode, shards=n) for mode, n in (("hard", 1), ("soft", 1), ("topk", 1),
                                                                                ("soft", 2))]
    return {"root": root,
            "checkpoint": {"checkpoint": (root / "intact.safetensors").read_bytes()},
            "labels": {f"{f.name}/{s.name}": s.read_bytes() for f in folders for s in sorted(f.iterdir())}}


# ---- mutations --------------------------------------------------------------------------------------

def split(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8: 8 + n]), raw[8 + n:]


def join(header: dict, data_bytes: bytes, pad: int = 0) -> bytes:
    text = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(text)) + text + data_bytes


def with_meta(raw: bytes, key: str, value) -> bytes:
    """The file with one metadata value replaced (JSON-encoded unless dpl stores the key as plain text)."""
    header, rest = split(raw)
    header["__metadata__"][key] = value if key in artifacts.PLAIN_KEYS else json.dumps(value)
    return join(header, rest)


def with_entry(raw: bytes, tensor: str, field: str, value) -> bytes:
    header, rest = split(raw)
    header[tensor][field] = value
    return join(header, rest)


class Mutated(bytes):
    """Mutated bytes that print as what was done to them, so a failing case's report stays short."""

    def __new__(cls, blob: bytes, how: str):
        obj = super().__new__(cls, blob)
        obj.how = how
        return obj

    def __repr__(self):
        return f"<{len(self)} bytes: {self.how[:300]}>"


INTS = st.sampled_from([-1, 0, 1, 2, 3, 7, 10, 12, 2**16, 2**20, 2**31, 2**40, 2**63, 10**30]) | st.integers()
JSON = st.recursive(st.none() | st.booleans() | INTS | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
SAME_SIZE = [["F64", "I64", "U64"], ["F32", "I32", "U32"], ["F16", "BF16", "I16", "U16"], ["U8", "I8", "BOOL"]]


@st.composite
def byte_mutation(draw, raw: bytes) -> bytes:
    """Truncate, flip, overwrite, insert or delete bytes anywhere (half the time inside the header)."""
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    pos = draw(st.integers(0, header_end - 1) | st.integers(0, len(raw) - 1))
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete"]))
    if kind == "truncate":
        return Mutated(raw[:pos], f"truncated at {pos}")
    if kind == "flip":
        mask = draw(st.integers(1, 255))
        return Mutated(raw[:pos] + bytes([raw[pos] ^ mask]) + raw[pos + 1:], f"byte {pos} xor {mask}")
    if kind == "delete":
        n = draw(st.integers(1, 16))
        return Mutated(raw[:pos] + raw[pos + n:], f"{n} bytes deleted at {pos}")
    chunk = draw(st.binary(min_size=1, max_size=16))
    end = pos + (len(chunk) if kind == "overwrite" else 0)
    return Mutated(raw[:pos] + chunk + raw[end:], f"{kind} {chunk!r} at {pos}")


@st.composite
def size_lie(draw, raw: bytes) -> bytes:
    """A header-size prefix that lies: off by a little, past the file, absurd."""
    n = struct.unpack("<Q", raw[:8])[0]
    size = draw(st.sampled_from([0, 1, 2, n - 1, n + 1, n + 8, len(raw), artifacts.MAX_HEADER + 1, 2**63, 2**64 - 1])
                | st.integers(0, 2**64 - 1))
    return Mutated(struct.pack("<Q", size) + raw[8:], f"header size {size} (really {n})")


@st.composite
def oversized(draw, raw: bytes) -> bytes:
    """Headers that are huge or built to hurt a parser: padding, deep nesting, long numbers, many entries."""
    header, rest = split(raw)
    kind = draw(st.sampled_from(["padding", "nesting", "long-number", "many-entries", "long-string"]))
    n = draw(st.integers(1, {"padding": 4 << 20, "nesting": 200_000, "long-number": 100_000, "many-entries": 20_000,
                             "long-string": 4 << 20}[kind]))
    if kind == "padding":
        blob = join(header, rest, pad=n)
    elif kind in ("nesting", "long-number"):
        text = b'{"x":' + (b"[" * n + b"]" * n if kind == "nesting" else b"9" * n) + b"}"
        blob = struct.pack("<Q", len(text)) + text + rest
    elif kind == "many-entries":
        for i in range(n):
            header[f"extra.{i}"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
        blob = join(header, rest)
    else:
        key = draw(st.sampled_from(sorted(header["__metadata__"])))
        blob, kind = with_meta(raw, key, "x" * n), f"long-string in {key}"
    return Mutated(blob, f"{kind} {n}")


@st.composite
def header_mutation(draw, raw: bytes) -> bytes:
    """A parseable header that lies: metadata values, tensor dtypes, shapes, offsets."""
    header, rest = split(raw)
    meta = header["__metadata__"]
    names = sorted(k for k in header if k != "__metadata__")
    kind = draw(st.sampled_from(["meta", "meta", "meta-field", "meta-drop", "meta-not-text", "dtype", "dtype-same-size",
                                 "shape", "shape-same-size", "offsets", "offsets-swap", "entry-drop"]))
    key, tensor = draw(st.sampled_from(sorted(meta))), draw(st.sampled_from(names))
    entry = header[tensor]
    before = (meta.get(key), dict(entry))
    if kind == "meta":
        meta[key] = draw(st.text(max_size=12)) if key in artifacts.PLAIN_KEYS else json.dumps(draw(JSON))
    elif kind == "meta-field":
        value = json.loads(meta[key]) if key not in artifacts.PLAIN_KEYS else None
        if isinstance(value, dict):
            value[draw(st.sampled_from(sorted(value)) | st.text(max_size=6)) if value else "x"] = draw(JSON)
        elif isinstance(value, list) and value:
            value[draw(st.integers(0, len(value) - 1))] = draw(JSON)
        else:
            value = draw(INTS)
        meta[key] = json.dumps(value)
    elif kind == "meta-drop":
        del meta[key]
    elif kind == "meta-not-text":
        meta[key] = draw(JSON.filter(lambda v: not isinstance(v, str)))
    elif kind == "dtype":
        entry["dtype"] = draw(st.sampled_from(sorted(artifacts.DTYPE_SIZES) + ["F8_E4M3", "I4", "", "f32"]) | JSON)
    elif kind == "dtype-same-size":       # the byte count still fits: only the dtype lies
        entry["dtype"] = draw(st.sampled_from(next(g for g in SAME_SIZE if entry["dtype"] in g)))
    elif kind == "shape":
        entry["shape"] = draw(st.lists(INTS, max_size=4) | JSON)
    elif kind == "shape-same-size":       # the same number of values in another shape
        numel = 1
        for d in entry["shape"]:
            numel *= d
        entry["shape"] = draw(st.sampled_from([[numel], [1, numel], [numel, 1], entry["shape"][::-1], []]))
    elif kind == "offsets":
        entry["data_offsets"] = draw(st.lists(INTS, max_size=3) | JSON)
    elif kind == "offsets-swap":
        other = header[draw(st.sampled_from(names))]
        entry["data_offsets"], other["data_offsets"] = other["data_offsets"], entry["data_offsets"]
    else:
        del header[tensor]
    return Mutated(join(header, rest), f"{kind}: {key}={meta.get(key)!r} (was {before[0]!r}); "
                                       f"{tensor}={header.get(tensor)} (was {before[1]})")


MUTATIONS = {"bytes": byte_mutation, "header-size": size_lie, "header": header_mutation, "oversized": oversized}


# ---- running a case ---------------------------------------------------------------------------------

def _hang(signum, frame):
    raise TimeoutError(f"a case ran past {CASE_SECONDS} s")


def clean(read, path: Path) -> None:
    """Run one case: success, or a one-line DplError that names `path`; anything else fails (and counts)."""
    STATS["cases"] += 1
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(CASE_SECONDS)
    try:
        read(path)
        outcome = "harmless"
    except DplError as e:
        outcome = "refused" if str(path) in str(e) and "\n" not in str(e) else f"unclear message: {e}"
    except Exception:
        STATS["non-clean"] += 1
        raise
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    STATS[outcome if outcome in ("harmless", "refused") else "non-clean"] += 1
    assert outcome in ("harmless", "refused"), outcome


def read_checkpoint(path: Path) -> None:
    """Load, rebuild the model and run it on the input the checkpoint declares."""
    ckpt = artifacts.load_checkpoint(path)
    model = ckpt.build_model().eval()
    c, s = ckpt.input["channels"], ckpt.input["size"]
    if c * s * s <= 1 << 16:
        with torch.no_grad():
            model(torch.zeros(1, c, s, s))


def read_labels(folder: Path, allow_partial: bool = False) -> None:
    """Read the folder and make the training targets distill would make from it."""
    labels = artifacts.read_labels(folder, allow_partial=allow_partial)
    rows = label.select(labels, min_confidence=0.0, balance=4)
    label.soft_targets(labels, rows, tau=1.0, hard=False)


# artifact, mutation, cases
FUZZ = [
    ("checkpoint", "bytes", 700), ("checkpoint", "header", 900), ("checkpoint", "header-size", 80),
    ("checkpoint", "oversized", 40),
    ("labels", "bytes", 600), ("labels", "header", 900), ("labels", "header-size", 60), ("labels", "oversized", 30),
]


@pytest.mark.parametrize("artifact,mutation,cases", FUZZ, ids=[f"{a}-{m}" for a, m, _ in FUZZ])
def test_mutated_artifacts_are_read_or_refused_cleanly(base, artifact, mutation, cases):
    root = base["root"]

    @fuzz(cases)
    @given(st.data())
    def case(d):
        name = d.draw(st.sampled_from(sorted(base[artifact])), label="artifact")
        raw = base[artifact][name]
        blob = d.draw(MUTATIONS[mutation](raw), label="mutation")
        if artifact == "checkpoint":
            target = root / "mutated.safetensors"
            target.write_bytes(blob)
            clean(read_checkpoint, target)
        else:
            target = root / name          # the shard, mutated in place in its folder, and put back after
            target.write_bytes(blob)
            partial = d.draw(st.booleans(), label="allow_partial")
            try:
                clean(lambda folder: read_labels(folder, partial), target.parent)
            finally:
                target.write_bytes(raw)

    case()


@pytest.mark.parametrize("artifact", ["checkpoint", "labels"])
def test_info_on_mutated_artifacts_exits_0_or_refuses_in_one_line(base, artifact):
    """dpl info reads a header, renders metadata and follows lineage: the whole path through the CLI."""
    root = base["root"]

    @fuzz(120)
    @given(st.data())
    def case(d):
        name = d.draw(st.sampled_from(sorted(base[artifact])))
        raw = base[artifact][name]
        blob = d.draw(st.one_of(*(m(raw) for m in MUTATIONS.values() if m is not oversized)))
        target = root / ("mutated.safetensors" if artifact == "checkpoint" else name)
        target.write_bytes(blob)
        try:
            clean(cli_info, target if artifact == "checkpoint" else target.parent)
        finally:
            if artifact == "labels":
                target.write_bytes(raw)

    case()


def cli_info(path: Path) -> None:
    r = dpl("info", path)
    if r.code != 0:
        assert_refused(r, str(path))
        raise DplError(r.stderr.strip())


# ---- a few mutated files through the commands that load them ----------------------------------------

def truncated(raw):
    return raw[: len(raw) // 2]


def header_byte_flipped(raw):
    return raw[:20] + bytes([raw[20] ^ 0x5B]) + raw[21:]


def arch_with(raw, **knobs):
    return with_meta(raw, "arch", {**json.loads(split(raw)[0]["__metadata__"]["arch"]), **knobs})


# name: (mutation, whether info refuses it too: info reads the header only, eval builds and runs the model)
BAD_CHECKPOINTS = {
    "truncated": (truncated, True),
    "header-byte-flipped": (header_byte_flipped, True),
    "header-size-absurd": (lambda raw: struct.pack("<Q", 2**62) + raw[8:], True),
    "num-classes-lies": (lambda raw: with_meta(raw, "num_classes", 3), False),
    "num-classes-absurd": (lambda raw: with_meta(raw, "num_classes", 10**12), True),
    "arch-absurd": (lambda raw: arch_with(raw, width=4000), False),
    "arch-unknown": (lambda raw: with_meta(raw, "arch", {"name": "cnn-xxl"}), False),
    "arch-knob-not-a-number": (lambda raw: arch_with(raw, dropout="0.5"), False),
    "input-lies": (lambda raw: with_meta(raw, "input", {"channels": 2, "size": 8, "mean": [0.3], "std": [0.4]}), True),
    "dtype-lies": (lambda raw: with_entry(raw, "head.fc.bias", "dtype", "I32"), False),
    "shape-lies": (lambda raw: with_entry(raw, "head.fc.weight", "shape", [4, 10]), False),
    "offsets-lie": (lambda raw: with_entry(raw, "head.fc.bias", "data_offsets", [0, 2**50]), True),
    "format-from-the-future": (lambda raw: with_meta(raw, "dpl.format", "2"), True),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_eval_and_info_on_a_mutated_checkpoint(tmp_path, base, case):
    mutate, info_refuses = BAD_CHECKPOINTS[case]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(mutate(base["checkpoint"]["checkpoint"]))
    STATS["cases"] += 2
    assert_refused(dpl("eval", bad), str(bad))
    if info_refuses:
        assert_refused(dpl("info", bad), str(bad))
    else:
        assert dpl("info", bad).code == 0
    STATS["refused"] += 1 + info_refuses
    STATS["harmless"] += not info_refuses


@pytest.fixture(scope="module")
def digits_labels(tmp_path_factory) -> Path:
    """Soft labels that fit digits:train, so that only the mutation stands between them and distill."""
    return make_labels(tmp_path_factory.mktemp("digits") / "labels", "soft", data.load("digits"))


BAD_SHARDS = {
    "truncated": truncated,
    "header-byte-flipped": header_byte_flipped,
    "count-lies": lambda raw: with_meta(raw, "count", 5),
    "total-lies": lambda raw: with_meta(raw, "total", 10**15),
    "world-absurd": lambda raw: with_meta(raw, "world", 2**16),
    "rank-shards-absurd": lambda raw: with_meta(raw, "rank_shards", 10**15),
    "rank-not-a-number": lambda raw: with_meta(raw, "rank", "0"),
    "mode-unknown": lambda raw: with_meta(raw, "mode", "fuzzy"),
    "probs-shape-lies": lambda raw: with_entry(raw, "probs", "shape", [676, 5, 2]),
    "label-as-float": lambda raw: with_entry(raw, "label", "dtype", "F64"),
}


@pytest.mark.parametrize("case", sorted(BAD_SHARDS))
def test_distill_eval_and_info_refuse_a_mutated_label_folder(tmp_path, digits_labels, case):
    folder = tmp_path / "labels"
    shutil.copytree(digits_labels, folder)
    for shard in folder.iterdir():
        shard.write_bytes(BAD_SHARDS[case](shard.read_bytes()))
    out = tmp_path / "student.safetensors"
    for args in (["distill", "--labels", folder, "--epochs", "1", "-o", out], ["eval", folder], ["info", folder]):
        STATS["cases"] += 1
        assert_refused(dpl(*args), str(folder))
        STATS["refused"] += 1
    assert not out.exists()


# ---- the count ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def summary(request, tmp_path_factory):
    yield
    line = (f"fuzz: {STATS['cases']} cases ({STATS['refused']} refused with DplError, {STATS['harmless']} read "
            f"as harmless), {STATS['non-clean']} non-clean")
    (tmp_path_factory.getbasetemp() / "fuzz-summary.txt").write_text(line + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)


def test_every_case_ended_cleanly():
    """Last in the module: the count of what ran before it."""
    if not STATS["cases"]:
        pytest.skip("run with the fuzz tests above")
    assert STATS["non-clean"] == 0, STATS
    assert STATS["cases"] == STATS["refused"] + STATS["harmless"]
