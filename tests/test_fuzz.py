"""Fuzzing the artifact reader: mutated checkpoints and label shards end in success (a harmless mutation) or
in a DplError naming the file, never another exception, a crash or a hang.

Every task's artifacts: a classifier's checkpoint and label shards, a detector's box label shards, a multi-head
student and the label folders its heads write (MIL models label nothing: `dpl label` does not serve them), read by
the core readers and by the commands that take them (info, eval, distill, label); and metrics logs and the history
a checkpoint keeps, read by records.read_log/history_of, dpl plot curves and dpl report.

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
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_refused, dpl, write_imagefolder
from dpl.core import DplError, artifacts, data, models
from dpl.core.data import boxes as box_data
from dpl.core.data import scenes
from dpl.core.methods import detect, experts, label
from dpl.core.methods.distill import DistillOptions
from dpl.core.reporting import records

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


TINY = "fitnet-thin:depth=3,width=2"
# The scenes of box label folders: 8 train scenes of 32 px, 4 of them labeled (the pool is the other 4).
SCENE = scenes.SceneSpec(source="digits", canvas=32, objects=(1, 2), scale=(10, 16), scenes=8, test_scenes=4)
HEADS = ("digits", "shapes")


def make_box_labels(folder: Path, pool: scenes.BoxData, shards: int = 2) -> Path:
    """A box label folder of `shards` shards, written as `dpl label` writes a detector's pseudo-boxes (the pool's
    true boxes, scored from 0.3 to 1)."""
    truth = pool.truth
    found = box_data.Boxes(truth.offsets, truth.boxes, truth.labels, torch.linspace(0.3, 1.0, len(truth.labels)))
    meta = {"teachers": [{"role": "teacher", "path": str(folder.parent / "absent.safetensors"), "sha256": "0" * 64}],
            "data": pool.record, "classes": pool.classes, "num_classes": len(pool.classes),
            "image_size": list(pool.shape[1:]), "total": len(pool), "world": 1}
    folder.mkdir(parents=True)
    bounds = [len(pool) * i // shards for i in range(shards + 1)]
    for seq, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        rows = torch.arange(lo, hi)
        box_data.write_box_shard(folder, meta, 0, seq, shards, rows, found.subset(rows))
    return folder


@pytest.fixture(scope="module")
def box_base(tmp_path_factory):
    """Box label folders of one and of two shards, as bytes; the scenes they were made for."""
    root = tmp_path_factory.mktemp("fuzz-boxes")
    full = scenes.load_boxes("scenes:digits", "train", SCENE)
    pool, labeled = (detect.part_of(full, 4, 0, part) for part in ("unlabeled", "labeled"))
    folders = [make_box_labels(root / f"boxes-{n}", pool, shards=n) for n in (1, 2)]
    return {"root": root, "pool": pool, "labeled": labeled, "folders": folders,
            "box-labels": {f"{f.name}/{s.name}": s.read_bytes() for f in folders for s in sorted(f.iterdir())}}


def make_heads_checkpoint(path: Path, shapes: Path) -> None:
    """A two-head student (digits: 10 classes, shapes: 2) as `dpl distill --labels A --labels B` records it."""
    digits, shape_classes = [str(c) for c in range(10)], ["cat", "dog"]
    spec = models.arch_spec(TINY, num_classes=12, in_channels=1, image_size=8)
    heads = [{"name": "digits", "classes": digits, "offset": 0, "data": "digits:train", "test": "digits:test",
              "labels": {"path": str(path.parent / "absent-digits"), "sha256": "0" * 64}, "tau": 1.0},
             {"name": "shapes", "classes": shape_classes, "offset": 10, "data": f"imagefolder:{shapes}",
              "test": f"imagefolder:{shapes}:test", "labels": {"path": str(path.parent / "absent-shapes"),
                                                               "sha256": "0" * 64}, "tau": 2.0}]
    meta = {"arch": spec, "num_classes": 12, "heads": heads,
            "classes": [f"digits:{c}" for c in digits] + [f"shapes:{c}" for c in shape_classes],
            "input": artifacts.input_meta(1, 8, [0.3], [0.4]),
            "data": {"spec": "digits:test", "part": "all", "n": 445, "fingerprint": "0" * 64},
            "parents": [{"role": "labels", "path": h["labels"]["path"], "sha256": "0" * 64} for h in heads],
            "metrics": {"test_top1_digits": 0.5}, "seed": 0, "command": ["dpl", "distill"]}
    artifacts.save_checkpoint(path, models.build(spec), meta)


@pytest.fixture(scope="module")
def experts_base(tmp_path_factory):
    """A two-head student and the label folders its heads write (`dpl label` of it on digits:test, two shards
    each), as bytes; the pool they label."""
    root = tmp_path_factory.mktemp("fuzz-experts")
    shapes = write_imagefolder(root / "shapes", classes=("cat", "dog"), per_class=3)
    make_heads_checkpoint(root / "heads.safetensors", shapes)
    r = dpl("label", root / "heads.safetensors", "--data", "digits:test", "--shard-size", "300", "--device", "cpu",
            "-o", root / "head-labels")
    assert r.code == 0, r
    folders = [root / "head-labels" / h for h in HEADS]
    return {"root": root, "pool": data.load("digits:test"), "folders": folders,
            "heads-checkpoint": {"heads": (root / "heads.safetensors").read_bytes()},
            "head-labels": {f"head-labels/{f.name}/{s.name}": s.read_bytes() for f in folders
                            for s in sorted(f.iterdir())}}


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


def clean(read, path: Path) -> str:
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
    return outcome


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


def read_box_labels(folder: Path, store: dict) -> None:
    """Read a box label folder, make the training set distill would make from it (the labeled images' true boxes
    plus the pseudo-boxes) and measure it as eval does (pycocotools mAP, CorLoc, precision/recall)."""
    labels = box_data.read_box_labels(folder)
    detect.with_pseudo_boxes(store["labeled"], store["pool"], labels, 0.0)
    box_data.pseudo_box_quality(labels.boxes, store["pool"].truth.subset(labels.index), store["pool"].classes)


def read_heads_checkpoint(path: Path, store: dict) -> None:
    """A multi-head student as its consumers read it: the expert a label folder of each head names (header only),
    then the model rebuilt and run, each head's slice of the logits taken."""
    for head in (None, *HEADS, "absent"):
        entry = {"role": "teacher", "path": str(path), "sha256": "0" * 64, **({"head": head} if head else {})}
        experts.expert_of(SimpleNamespace(meta={"teachers": [entry]}))
    ckpt = artifacts.load_checkpoint(path)
    model = ckpt.build_model().eval()
    c, s = ckpt.input["channels"], ckpt.input["size"]
    with torch.no_grad():
        logits = model(torch.zeros(1, c, s, s)) if c * s * s <= 1 << 16 else None
    for h in ckpt.heads:
        ckpt.head(h["name"])
        if logits is not None:
            experts.head_logits(logits, h).softmax(1)


def read_head_labels(folder: Path, store: dict) -> None:
    """The label folders of a multi-head student's heads, as distill --labels A --labels B reads them: each read,
    the heads made (each expert found through its teacher), the folders checked against their pool, the targets
    made."""
    labels = [artifacts.read_labels(f) for f in store["folders"]]
    heads = experts.heads_of(labels, None, DistillOptions(), epochs=1)
    experts.check_pool(heads, store["pool"])
    for h in heads:
        label.soft_targets(h.labels, torch.arange(len(h.labels)), tau=h.opts.tau, hard=h.opts.hard)


# artifact -> the fixture that makes it, its reader (path, store), whether it is one file (else shards of folders)
ARTIFACTS = {
    "checkpoint": ("base", None, True),
    "labels": ("base", None, False),
    "box-labels": ("box_base", read_box_labels, False),
    "heads-checkpoint": ("experts_base", read_heads_checkpoint, True),
    "head-labels": ("experts_base", read_head_labels, False),
}

# artifact, mutation, cases
FUZZ = [
    ("checkpoint", "bytes", 700), ("checkpoint", "header", 900), ("checkpoint", "header-size", 80),
    ("checkpoint", "oversized", 40),
    ("labels", "bytes", 600), ("labels", "header", 900), ("labels", "header-size", 60), ("labels", "oversized", 30),
    ("box-labels", "bytes", 150), ("box-labels", "header", 250), ("box-labels", "header-size", 20),
    ("box-labels", "oversized", 10),
    ("heads-checkpoint", "bytes", 120), ("heads-checkpoint", "header", 250), ("heads-checkpoint", "header-size", 20),
    ("heads-checkpoint", "oversized", 10),
    ("head-labels", "bytes", 100), ("head-labels", "header", 200), ("head-labels", "header-size", 20),
    ("head-labels", "oversized", 10),
]


@pytest.mark.parametrize("artifact,mutation,cases", FUZZ, ids=[f"{a}-{m}" for a, m, _ in FUZZ])
def test_mutated_artifacts_are_read_or_refused_cleanly(request, artifact, mutation, cases):
    fixture, reader, one_file = ARTIFACTS[artifact]
    store = request.getfixturevalue(fixture)
    root = store["root"]

    @fuzz(cases)
    @given(st.data())
    def case(d):
        name = d.draw(st.sampled_from(sorted(store[artifact])), label="artifact")
        raw = store[artifact][name]
        blob = d.draw(MUTATIONS[mutation](raw), label="mutation")
        if one_file:
            target = root / ("mutated.safetensors" if artifact == "checkpoint" else f"mutated-{artifact}.safetensors")
            target.write_bytes(blob)
            clean(read_checkpoint if reader is None else lambda path: reader(path, store), target)
        else:
            target = root / name          # the shard, mutated in place in its folder, and put back after
            target.write_bytes(blob)
            try:
                if artifact == "labels":
                    partial = d.draw(st.booleans(), label="allow_partial")
                    clean(lambda folder: read_labels(folder, partial), target.parent)
                else:
                    clean(lambda folder: reader(folder, store), target.parent)
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


# ---- label shards and checkpoints of every task through the commands that read them ----------------------

def refused_cleanly(r, path: Path, outputs: tuple[Path, ...] = (), max_lines: int = 1) -> None:
    """The CLI's answer to a mutated input: exit 0, or a refusal (exit 2) in at most `max_lines` stderr lines
    that name `path`, with no traceback and none of `outputs` written. A refusal is raised as a DplError (so that
    `clean` counts it); anything else fails."""
    assert r.exception is None and "Traceback" not in r.stderr, r
    if r.code == 0:
        return
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.code == 2 and 1 <= len(lines) <= max_lines and str(path) in r.stderr, r
    assert not [o for o in outputs if o.exists()], (outputs, r)
    raise DplError(" / ".join(lines))


def command_of(artifact: str, command: str, target: Path, store: dict) -> tuple[list, Path | None]:
    """The command line that reads the mutated `target` (a file, or the folder of a mutated shard), and its output."""
    out = store["root"] / "out.safetensors"
    if command in ("info", "eval"):
        return [command, target] + (["--json"] if command == "eval" else []) + (
            ["--device", "cpu"] if artifact == "heads-checkpoint" and command == "eval" else []), None
    if command == "label":
        return ["label", target, "--data", "digits:test", "--device", "cpu", "-o", store["root"] / "labeled"], \
            store["root"] / "labeled"
    if artifact == "box-labels":
        return ["distill", "--labels", target, "--arch", "frcnn-cnn-s", "--min-confidence", "0", "--epochs", "1",
                "--batch-size", "16", "--device", "cpu", "-o", out], out
    heads = [target if f.name == target.name else f for f in store["folders"]]
    return ["distill", *(a for f in heads for a in ("--labels", f)), "--arch", TINY, "--epochs", "1", "--batch-size",
            "256", "--device", "cpu", "-o", out], out


def run_command(args: list, target: Path, output: Path | None) -> None:
    """Run one command on a mutated input: exit 0, or a clean refusal naming it that wrote nothing."""
    if output is not None:
        shutil.rmtree(output, ignore_errors=True) if output.is_dir() else output.unlink(missing_ok=True)
        records.log_path(output).unlink(missing_ok=True)
    outputs = () if output is None else (output, records.log_path(output))
    refused_cleanly(dpl(*args), target, outputs)


# artifact, command, cases: info reads the header (a folder: every shard) and follows the lineage; eval measures a
# box label folder against its scenes and each head of a student on its test data; distill trains on the folder(s)
CLI_FUZZ = [
    ("box-labels", "info", 30), ("box-labels", "eval", 25), ("box-labels", "distill", 6),
    ("heads-checkpoint", "info", 30), ("heads-checkpoint", "eval", 20), ("heads-checkpoint", "label", 12),
    ("head-labels", "info", 20), ("head-labels", "distill", 10),
]


@pytest.mark.parametrize("artifact,command,cases", CLI_FUZZ, ids=[f"{a}-{c}" for a, c, _ in CLI_FUZZ])
def test_commands_on_mutated_artifacts_of_every_task_exit_0_or_refuse_in_one_line(request, artifact, command, cases):
    fixture, _, one_file = ARTIFACTS[artifact]
    store = request.getfixturevalue(fixture)
    root = store["root"]

    @fuzz(cases)
    @given(st.data())
    def case(d):
        name = d.draw(st.sampled_from(sorted(store[artifact])), label="artifact")
        raw = store[artifact][name]
        blob = d.draw(st.one_of(*(m(raw) for m in MUTATIONS.values() if m is not oversized)), label="mutation")
        target = root / (f"mutated-{artifact}.safetensors" if one_file else name)
        target.write_bytes(blob)
        where = target if one_file else target.parent
        args, output = command_of(artifact, command, where, store)
        try:
            clean(lambda path: run_command(args, path, output), where)
        finally:
            if not one_file:
                target.write_bytes(raw)

    case()


def tensor_values(raw: bytes, name: str, change) -> bytes:
    """The file with tensor `name`'s values changed by `change` (a function of a copy of them), header kept."""
    header, rest = split(raw)
    info = header[name]
    lo, hi = info["data_offsets"]
    dtype = {"F32": torch.float32, "I64": torch.int64}[info["dtype"]]
    values = torch.frombuffer(bytearray(rest[lo:hi]), dtype=dtype).reshape(info["shape"]).clone()
    change(values)
    return join(header, rest[:lo] + values.numpy().tobytes() + rest[hi:])


def first_box(values):
    return lambda t: t[0].copy_(torch.tensor(values, dtype=t.dtype))


# name: (mutation of a box shard, whether the commands must refuse it: a lie about the shard's own structure is
# refused by every reader; a box that is odd but well-formed may be read, measured and trained on, or refused)
BAD_BOX_SHARDS = {
    "truncated": (truncated, True),
    "header-byte-flipped": (header_byte_flipped, True),
    "count-lies": (lambda raw: with_meta(raw, "count", 1), True),
    "total-lies": (lambda raw: with_meta(raw, "total", 10**15), True),
    "world-absurd": (lambda raw: with_meta(raw, "world", 2**16), True),
    "num-classes-lies": (lambda raw: with_meta(raw, "num_classes", 1), True),
    "kind-is-labels": (lambda raw: with_meta(raw, "dpl.kind", "labels"), True),
    "boxes-shape-lies": (lambda raw: with_entry(raw, "boxes", "shape", split(raw)[0]["boxes"]["shape"][::-1]), True),
    "box-label-as-float": (lambda raw: with_entry(raw, "box_label", "dtype", "F64"), True),
    "box-offsets-lie": (lambda raw: tensor_values(raw, "box_offsets", lambda t: t[-1:].add_(1)), True),
    "index-negative": (lambda raw: tensor_values(raw, "index", lambda t: t.fill_(-1)), True),
    "data-image-size-not-a-list": (lambda raw: with_meta(raw, "data", {**json.loads(
        split(raw)[0]["__metadata__"]["data"]), "image_size": 32}), False),
    "data-scenes-not-a-spec": (lambda raw: with_meta(raw, "data", {**json.loads(
        split(raw)[0]["__metadata__"]["data"]), "scenes": {"source": "digits", "canvas": "32"}}), False),
    "box-nan": (lambda raw: tensor_values(raw, "boxes", first_box([float("nan")] * 4)), False),
    "box-infinite": (lambda raw: tensor_values(raw, "boxes", first_box([0.0, 0.0, float("inf"), 5.0])), False),
    "box-flipped": (lambda raw: tensor_values(raw, "boxes", first_box([20.0, 20.0, 5.0, 5.0])), False),
    "box-empty": (lambda raw: tensor_values(raw, "boxes", first_box([5.0, 5.0, 5.0, 5.0])), False),
    "box-outside": (lambda raw: tensor_values(raw, "boxes", first_box([-50.0, -50.0, 500.0, 5000.0])), False),
    "score-nan": (lambda raw: tensor_values(raw, "box_score", lambda t: t.fill_(float("nan"))), False),
    "score-negative": (lambda raw: tensor_values(raw, "box_score", lambda t: t.fill_(-3.0)), False),
}


@pytest.mark.parametrize("case", list(BAD_BOX_SHARDS))
def test_distill_eval_and_info_on_a_mutated_box_label_folder(tmp_path, box_base, case):
    mutate, must_refuse = BAD_BOX_SHARDS[case]
    folder = tmp_path / "boxes"
    shutil.copytree(box_base["folders"][1], folder)
    for shard in folder.iterdir():
        shard.write_bytes(mutate(shard.read_bytes()))
    store, failures = {**box_base, "root": tmp_path}, []
    for command in ("distill", "eval", "info"):          # each command checked, their failures said together
        args, output = command_of("box-labels", command, folder, store)
        try:
            outcome = clean(lambda path: run_command(args, path, output), folder)
        except Exception as e:
            failures.append(f"dpl {command}: {type(e).__name__}: {e}")
            continue
        if must_refuse and outcome != "refused":
            failures.append(f"dpl {command} read a box folder whose shards lie")
    assert not failures, "\n".join(failures)


def heads_with(raw: bytes, **changes) -> bytes:
    """The student with its second head (shapes) changed."""
    heads = json.loads(split(raw)[0]["__metadata__"]["heads"])
    return with_meta(raw, "heads", [heads[0], {**heads[1], **changes}])


# name: (a lie in a multi-head student's heads, whether eval must refuse it: eval measures every head on its test
# data; info shows the header, label labels with every head: either may read what eval cannot measure)
BAD_HEADS = {
    "heads-do-not-add-up": (lambda raw: heads_with(raw, classes=["cat", "dog", "owl"]), True),
    "head-offset-gap": (lambda raw: heads_with(raw, offset=11), True),
    "head-name-a-path": (lambda raw: heads_with(raw, name="../x"), True),
    "head-named-twice": (lambda raw: heads_with(raw, name="digits"), True),
    "head-test-unknown-data": (lambda raw: heads_with(raw, test="nope:test"), True),
    "head-test-other-classes": (lambda raw: heads_with(raw, test="digits:test"), True),
    "head-test-not-text": (lambda raw: heads_with(raw, test=["digits:test"]), True),
    "head-tau-negative": (lambda raw: heads_with(raw, tau=-1.0), False),
    "heads-empty": (lambda raw: with_meta(raw, "heads", []), True),
    "heads-not-a-list": (lambda raw: with_meta(raw, "heads", {"digits": 0}), True),
    "num-classes-lies": (lambda raw: with_meta(raw, "num_classes", 13), True),
    "weights-dtype-lies": (lambda raw: with_entry(raw, "head.fc.bias", "dtype", "I32"), True),
}


@pytest.mark.parametrize("case", list(BAD_HEADS))
def test_eval_info_and_label_on_a_student_with_lying_heads(tmp_path, experts_base, case):
    mutate, eval_refuses = BAD_HEADS[case]
    bad = tmp_path / "student.safetensors"
    bad.write_bytes(mutate(experts_base["heads-checkpoint"]["heads"]))
    store, failures = {**experts_base, "root": tmp_path}, []
    for command in ("eval", "info", "label"):            # each command checked, their failures said together
        args, output = command_of("heads-checkpoint", command, bad, store)
        try:
            outcome = clean(lambda path: run_command(args, path, output), bad)
        except Exception as e:
            failures.append(f"dpl {command}: {type(e).__name__}: {e}")
            continue
        if command == "eval" and eval_refuses and outcome != "refused":
            failures.append("dpl eval measured a student whose heads lie")
    assert not failures, "\n".join(failures)


# ---- metrics logs (OUT.metrics.jsonl) and the history a checkpoint keeps -----------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_labels):
    """The metrics logs and checkpoints of two tiny runs, as bytes: teach with validation (val_* fields), distill
    (pseudo-label terms, a per-class vector); both with step lines."""
    root = tmp_path_factory.mktemp("fuzz-runs")
    fast = ("--arch", TINY, "--epochs", "2", "--log-every", "3", "--batch-size", "256", "--device", "cpu")
    made = {"teach": ("teach", "--data", "digits", "--val", "50"), "distill": ("distill", "--labels", digits_labels)}
    for name, args in made.items():
        r = dpl(*args, *fast, "-o", root / f"{name}.safetensors")
        assert r.code == 0, r
    return {"root": root,
            "logs": {n: records.log_path(root / f"{n}.safetensors").read_bytes() for n in made},
            "checkpoints": {n: (root / f"{n}.safetensors").read_bytes() for n in made}}


class Raw(str):
    """JSON text put as it is into a line or a value: what json.dumps cannot write (deep nesting, 5000 digits)."""


def to_json(value) -> str:
    """json.dumps (NaN and infinities as JavaScript literals, as Python writes them), with Raw kept as text."""
    if isinstance(value, Raw):
        return value
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(to_json, value)) + "]"
    return json.dumps(value)


NESTED = st.integers(1, 100_000).map(lambda n: Raw("[" * n + "]" * n))
ODD = st.sampled_from([None, True, False, 0, -1, 1, 2**63, 10**30, 10**400, 1e308, -1e308, 5e-324, float("nan"),
                       float("inf"), float("-inf"), "", "1", "0.5", "nan", "step", "epoch", "x" * 200, [], {}, [1, 2],
                       [None], [[1.0]], {"a": 1}, {"loss": 1.0}, Raw("9" * 5000), Raw("1e999"), Raw("-0")])
LOG_VALUE = ODD | JSON | NESTED
LOG_KEYS = ["event", "epoch", "step", "lr", "loss", "ce", "acc", "val_top1", "pseudo", "pseudo_conf",
            "pseudo_class_frac", "seconds"]
NOT_A_RECORD = st.sampled_from([Raw("[1, 2]"), Raw("3"), Raw('"epoch"'), Raw("null"), Raw("true"), Raw("[]"),
                                Raw("{}"), Raw('{"event": "start"}'), Raw('{"event": "epoch"}'), Raw("{"),
                                Raw("garbage"), Raw("NaN")]) | NESTED | JSON.map(to_json).map(Raw)


@st.composite
def record_mutation(draw, records: list) -> tuple[list, list[str]]:
    """One to three edits of a run's records: a value replaced (by a string, a nested value, a list, null, NaN,
    a huge number, deep nesting, ...), a key dropped, a record duplicated, moved, dropped, or one that is not a
    record put among them."""
    records, done = [dict(r) if isinstance(r, dict) else r for r in records], []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "value", "value", "drop-key", "duplicate", "move", "drop", "insert"]))
        i = draw(st.integers(0, max(0, len(records) - 1)))
        record = records[i] if records else None
        if kind in ("value", "drop-key") and isinstance(record, dict):
            key = draw(st.sampled_from(sorted(record) + LOG_KEYS) | st.text(max_size=6))
            if kind == "value":
                record[key] = draw(LOG_VALUE, label="value")
                done.append(f"record {i} {key!r} = {to_json(record[key])[:60]}")
            else:
                record.pop(key, None)
                done.append(f"record {i} without {key!r}")
        elif kind == "duplicate" and records:
            j = draw(st.integers(0, len(records)))
            records.insert(j, dict(record) if isinstance(record, dict) else record)
            done.append(f"record {i} repeated at {j}")
        elif kind == "move" and records:
            j = draw(st.integers(0, len(records) - 1))
            records.insert(j, records.pop(i))
            done.append(f"record {i} moved to {j}")
        elif kind == "drop" and records:
            records.pop(i)
            done.append(f"record {i} dropped")
        else:
            j = draw(st.integers(0, len(records)))
            records.insert(j, draw(NOT_A_RECORD, label="inserted"))
            done.append(f"{to_json(records[j])[:60]} inserted at {j}")
    return records, done


@st.composite
def log_mutation(draw, raw: bytes) -> bytes:
    """A metrics log with its records edited (record_mutation), then, half the time, its bytes: truncated (mid-line),
    bytes that are not UTF-8 (or NUL, a BOM, CR LF line ends) put in, a byte flipped, blank lines."""
    records = [json.loads(line) for line in raw.decode().splitlines()]
    edited, done = draw(record_mutation(records)) if draw(st.booleans()) else (records, [])
    blob = "".join(to_json(r) + "\n" for r in edited).encode()
    if not done or draw(st.booleans()):
        kind = draw(st.sampled_from(["truncate", "insert", "flip", "crlf", "bom", "blank"]))
        pos = draw(st.integers(0, max(0, len(blob) - 1)))
        if kind == "truncate":
            blob = blob[:pos]
        elif kind == "insert":
            chunk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\x80\x80", b"\r",
                                          b"\xef\xbb\xbf", b"\x1b[2J"]) | st.binary(min_size=1, max_size=8))
            blob = blob[:pos] + chunk + blob[pos:]
            kind = f"insert {chunk!r}"
        elif kind == "flip" and blob:
            mask = draw(st.integers(1, 255))
            blob = blob[:pos] + bytes([blob[pos] ^ mask]) + blob[pos + 1:]
            kind = f"xor {mask}"
        elif kind == "crlf":
            blob = blob.replace(b"\n", b"\r\n")
        elif kind == "bom":
            blob = b"\xef\xbb\xbf" + blob
        else:
            blob = blob[:pos] + b"\n \n\t\n" + blob[pos:]
        done.append(f"bytes: {kind} at {pos}")
    return Mutated(blob, "; ".join(done))


@st.composite
def history_mutation(draw, raw: bytes) -> bytes:
    """A checkpoint whose `history` (the run's epoch records) is edited as record_mutation edits a log."""
    header, rest = split(raw)
    history, done = draw(record_mutation(json.loads(header["__metadata__"]["history"])))
    header["__metadata__"]["history"] = "[" + ", ".join(map(to_json, history)) + "]"
    return Mutated(join(header, rest), "history: " + "; ".join(done))


def read_log(path: Path) -> None:
    records.read_log(path)
    records.history_of(path)


def plot_curves(path: Path) -> None:
    """dpl plot curves RUN -o STEM: exit 0 with both figures written, or a refusal in at most three lines that names
    the run and writes neither."""
    stem = path.parent / "curves"
    outputs = (stem.with_suffix(".png"), stem.with_suffix(".svg"))
    for output in outputs:
        output.unlink(missing_ok=True)
    r = dpl("plot", "curves", path, "-o", stem)
    refused_cleanly(r, path, outputs, max_lines=3)
    assert all(o.exists() for o in outputs), r


def report(path: Path) -> None:
    """dpl report CHECKPOINT -o PAGE.html (the page draws the checkpoint's history as training curves)."""
    page = path.parent / "report.html"
    page.unlink(missing_ok=True)
    r = dpl("report", path, "-o", page, "--device", "cpu")
    refused_cleanly(r, path, (page,), max_lines=3)
    assert page.exists(), r


# what is read, by what, cases: logs by read_log and history_of, and by dpl plot curves; checkpoints whose history is
# edited by dpl plot curves and dpl report
RUN_FUZZ = [("log", read_log, 400), ("log", plot_curves, 30), ("checkpoint", plot_curves, 12),
            ("checkpoint", report, 4)]


@pytest.mark.parametrize("what,consumer,cases", RUN_FUZZ, ids=[f"{w}-{c.__name__}" for w, c, _ in RUN_FUZZ])
def test_mutated_metrics_logs_and_histories_are_read_or_refused_cleanly(runs, what, consumer, cases):
    root = runs["root"]
    store = runs["logs" if what == "log" else "checkpoints"]

    @fuzz(cases)
    @given(st.data())
    def case(d):
        name = d.draw(st.sampled_from(sorted(store)), label="run")
        blob = d.draw((log_mutation if what == "log" else history_mutation)(store[name]), label="mutation")
        target = root / ("mutated.metrics.jsonl" if what == "log" else "mutated.safetensors")
        target.write_bytes(blob)
        clean(consumer, target)

    case()


def log_lines(raw: bytes, edit) -> bytes:
    """The log with `edit` applied to its records (a list of dicts, edited in place; what it returns, if text,
    replaces the whole file as lines), written back one JSON text per line."""
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    edited = edit(lines)
    return "".join(to_json(r) + "\n" for r in (lines if edited is None else edited)).encode()


def last_epoch(lines: list) -> dict:
    return next(r for r in reversed(lines) if isinstance(r, dict) and r.get("event") == "epoch")


def set_field(key: str, value):
    return lambda raw: log_lines(raw, lambda lines: last_epoch(lines).__setitem__(key, value))


def drop_field(key: str):
    def edit(lines):
        del last_epoch(lines)[key]
    return lambda raw: log_lines(raw, edit)


# name: a metrics log made from a real one (teach, with validation and step lines)
BAD_LOGS = {
    **{f"loss-{name}": set_field("loss", value) for name, value in (
        ("dict", {"a": 1}), ("list", [1.0, 2.0]), ("nested-list", [[1.0]]), ("string", "0.5"), ("null", None),
        ("bool", True), ("nan", float("nan")), ("infinity", float("inf")), ("huge-int", 10**400), ("huge-float", 1e308),
        ("deep", Raw("[" * 100_000 + "]" * 100_000)), ("5000-digits", Raw("9" * 5000)))},
    **{f"epoch-{name}": set_field("epoch", value) for name, value in (
        ("string", "2"), ("float", 2.5), ("negative", -1), ("huge", 10**30), ("nan", float("nan")), ("null", None))},
    "per-class-vector-nested": set_field("acc", [[0.5], {"a": 1}]),
    "epoch-missing": drop_field("epoch"),
    "step-missing": drop_field("step"),
    "event-missing": drop_field("event"),
    "event-other": set_field("event", "start"),
    "only-step-lines": lambda raw: log_lines(raw, lambda lines: [r for r in lines if r["event"] == "step"]),
    "epochs-reordered": lambda raw: log_lines(raw, lambda lines: lines[::-1]),
    "epochs-duplicated": lambda raw: log_lines(raw, lambda lines: lines + lines),
    "line-not-an-object": lambda raw: log_lines(raw, lambda lines: lines + [[1, 2]]),
    "line-deep": lambda raw: raw + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "truncated-mid-line": lambda raw: raw[: len(raw) - 40],
    "not-utf8": lambda raw: raw[:30] + b"\xff\xfe" + raw[30:],
    "bom-and-crlf": lambda raw: b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"),
    "blank-lines": lambda raw: b"\n  \n" + raw.replace(b"\n", b"\n\n"),
    "empty": lambda raw: b"",
}


@pytest.mark.parametrize("case", list(BAD_LOGS))
def test_read_log_and_plot_curves_on_a_mutated_metrics_log(tmp_path, runs, case):
    log = tmp_path / "run.metrics.jsonl"
    log.write_bytes(BAD_LOGS[case](runs["logs"]["teach"]))
    failures = []
    for consumer in (read_log, plot_curves):             # each checked, their failures said together
        try:
            clean(consumer, log)
        except Exception as e:
            failures.append(f"{consumer.__name__}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


def history_with(edit):
    """The checkpoint with its history's last record edited by `edit` (the record, in place)."""
    def mutate(raw: bytes) -> bytes:
        header, rest = split(raw)
        history = json.loads(header["__metadata__"]["history"])
        edit(history[-1])
        header["__metadata__"]["history"] = "[" + ", ".join(map(to_json, history)) + "]"
        return join(header, rest)
    return mutate


# name: a checkpoint (teach's) whose history lies
BAD_HISTORIES = {
    "loss-list": history_with(lambda r: r.__setitem__("loss", [1.0, 2.0])),
    "loss-dict": history_with(lambda r: r.__setitem__("loss", {"a": 1})),
    "loss-huge-int": history_with(lambda r: r.__setitem__("loss", 10**400)),
    "epoch-missing": history_with(lambda r: r.pop("epoch")),
    "history-not-a-list": lambda raw: with_meta(raw, "history", {"epoch": 1, "loss": 1.0}),
}


@pytest.mark.parametrize("case", list(BAD_HISTORIES))
def test_plot_curves_and_report_on_a_checkpoint_whose_history_lies(tmp_path, runs, case):
    ckpt = tmp_path / "run.safetensors"
    ckpt.write_bytes(BAD_HISTORIES[case](runs["checkpoints"]["teach"]))
    failures = []
    for consumer in (plot_curves, report):               # each checked, their failures said together
        try:
            clean(consumer, ckpt)
        except Exception as e:
            failures.append(f"{consumer.__name__}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


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
