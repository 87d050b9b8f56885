"""The bad-input corpus: every case is refused with exit code 2 and a message naming the problem (the file or
the option), no traceback, and nothing written.

Inputs are made by fixtures in tmp folders (no committed binaries). A case's arguments name them as
{placeholders}: shared artifacts ({teacher}, {labels}, {shard}, {images}, {images_teacher}) and bad inputs
made fresh in the case's own folder on first mention ({text}, {empty}, {folder}, {no_images}, ...).
Cases already covered in tests/test_cli_*.py are not repeated here.
"""

import gzip
import struct
import zlib
from pathlib import Path

import pytest

from conftest import Placeholders, assert_refused, assert_usage_error, dpl, listing, write_imagefolder
from dpl.core import artifacts, data


def case(id, *args, words=(), usage=False, env=None, xfail=None):
    """One bad invocation: `words` must appear in the refusal; `usage` for typer's own (boxed) usage errors;
    `env` sets environment variables for the run; `xfail` names a known bug whose fix is not in this corpus."""
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(list(args), tuple(words), usage, env or {}, id=id, marks=marks)


CASES = [
    # -- wrong file kinds: a label folder or shard where a checkpoint goes and vice versa, text, empty, folder
    case("teach-init-label-shard", "teach", "--init", "{shard}", "-o", "{tmp}/t.safetensors",
         words=["{shard}", "'labels' artifact, expected a checkpoint"]),
    case("label-teacher-is-label-folder", "label", "{labels}", "-o", "{tmp}/l",
         words=["{labels}", "is a folder"]),
    case("label-ensemble-is-label-folder", "label", "{teacher}", "--ensemble", "{labels}", "-o", "{tmp}/l",
         words=["{labels}", "is a folder"]),
    case("label-teacher-is-text", "label", "{text}", "-o", "{tmp}/l", words=["{text}", "not a safetensors file"]),
    case("distill-labels-is-checkpoint", "distill", "--labels", "{teacher}", "-o", "{tmp}/s.safetensors",
         words=["{teacher}", "not a folder"]),
    case("distill-labels-is-text", "distill", "--labels", "{text}", "-o", "{tmp}/s.safetensors",
         words=["{text}", "not a folder"]),
    case("distill-labels-empty-folder", "distill", "--labels", "{folder}", "-o", "{tmp}/s.safetensors",
         words=["{folder}", "no label shards"]),
    case("distill-teacher-is-label-folder", "distill", "--teacher", "{labels}", "-o", "{tmp}/s.safetensors",
         words=["{labels}", "is a folder"]),
    case("distill-teacher-is-empty-file", "distill", "--teacher", "{empty}", "-o", "{tmp}/s.safetensors",
         words=["{empty}", "too short"]),
    case("hint-teacher-is-label-folder", "hint", "--teacher", "{labels}", "-o", "{tmp}/h.safetensors",
         words=["{labels}", "is a folder"]),
    case("hint-teacher-is-empty-file", "hint", "--teacher", "{empty}", "-o", "{tmp}/h.safetensors",
         words=["{empty}", "too short"]),
    case("eval-label-shard", "eval", "{shard}", words=["{shard}", "expected a checkpoint"]),
    case("eval-text-file", "eval", "{text}", words=["{text}", "not a safetensors file"]),
    case("eval-empty-file", "eval", "{empty}", words=["{empty}", "too short"]),
    case("eval-empty-folder", "eval", "{folder}", words=["{folder}", "no label shards"]),
    case("eval-checkpoint-and-label-folder", "eval", "{teacher}", "{labels}", words=["{labels}", "is a folder"]),
    case("info-label-shard", "info", "{shard}", words=["{shard}", "label folder"]),
    case("info-text-file", "info", "{text}", words=["{text}", "not a safetensors file"]),
    case("info-empty-file", "info", "{empty}", words=["{empty}", "too short"]),
    case("info-empty-folder", "info", "{folder}", words=["{folder}", "no label shards"]),
    # -- dpl export and dpl predict
    case("export-unknown-format", "export", "{teacher}", "-o", "{tmp}/m.tflite", "--format", "tflite",
         words=["tflite", "onnx, torchscript"]),
    case("export-label-shard", "export", "{shard}", "-o", "{tmp}/m.onnx", words=["{shard}", "expected a checkpoint"]),
    case("export-int8-torchscript", "export", "{teacher}", "-o", "{tmp}/m.pt", "--format", "torchscript", "--int8",
         words=["--int8", "--format onnx"]),
    case("predict-missing-folder", "predict", "{teacher}", "--data", "digits", "-o", "{tmp}/nope/p.csv",
         words=["{tmp}/nope", "does not exist"]),
    case("predict-unknown-suffix", "predict", "{teacher}", "--data", "digits", "-o", "{tmp}/p.txt",
         words=["p.txt", ".csv or .jsonl"]),
    case("predict-other-size", "predict", "{teacher}", "--data", "digits", "--resize", "12", "-o", "{tmp}/p.csv",
         words=["{teacher}", "1x8x8", "1x12x12", "--resize 8"]),
    case("predict-text-as-onnx", "predict", "{fake_onnx}", "--data", "digits", "-o", "{tmp}/p.csv",
         words=["{fake_onnx}", "not an ONNX model"]),
    case("predict-onnx-missing", "predict", "{tmp}/absent.onnx", "--data", "digits", "-o", "{tmp}/p.csv",
         words=["absent.onnx", "no such file"]),
    # -- data that does not fit: fingerprints, class counts, input shapes
    case("distill-labels-for-another-split", "distill", "--labels", "{labels}", "--data", "digits:test",
         "-o", "{tmp}/s.safetensors", words=["{labels}", "made for digits:train"]),
    case("hint-teacher-class-count", "hint", "--teacher", "{teacher}", "--data", "imagefolder:{images}",
         "-o", "{tmp}/h.safetensors", words=["{teacher}", "predicts 10 classes", "has 3"]),
    case("label-ensemble-class-count", "label", "{images_teacher}", "--ensemble", "{teacher}", "-o", "{tmp}/l",
         words=["{teacher}", "predicts 10 classes", "has 3"]),
    case("eval-resize-does-not-fit", "eval", "{teacher}", "--resize", "16", words=["{teacher}", "1x8x8", "1x16x16"]),
    # -- empty datasets, unreadable images, a single class
    case("teach-class-folders-without-images", "teach", "--data", "imagefolder:{no_images}",
         "-o", "{tmp}/t.safetensors",
         words=["no image files"]),
    case("label-partition-leaves-no-unlabeled", "label", "{images_teacher}", "--labeled-per-class", "6",
         "-o", "{tmp}/l", words=["unlabeled", "samples to label"]),
    case("distill-partition-leaves-no-unlabeled", "distill", "--teacher", "{images_teacher}",
         "--labeled-per-class", "6", "-o", "{tmp}/s.safetensors", words=["unlabeled", "no samples"]),
    # (an unreadable file inside a usable folder is skipped and recorded: tests/test_photos.py)
    case("teach-all-images-unreadable", "teach", "--data", "imagefolder:{all_unreadable}", "-o", "{tmp}/t.safetensors",
         words=["all-unreadable", "can be read"]),
    case("label-all-images-unreadable", "label", "{images_teacher}", "--data", "imagefolder:{all_unreadable}",
         "--resize", "8", "-o", "{tmp}/l", words=["all-unreadable", "can be decoded"]),
    case("teach-corrupt-idx-file", "teach", "--data", "fashion-mnist", "-o", "{tmp}/t.safetensors",
         env={"DPL_DATA": "{corrupt_idx}"}, words=["train-images-idx3-ubyte.gz", "unreadable IDX file"]),
    case("teach-single-class", "teach", "--data", "imagefolder:{one_class}", "-o", "{tmp}/t.safetensors",
         words=["at least 2 class sub-folders", "found 1"]),
    case("eval-single-class", "eval", "{teacher}", "--data", "imagefolder:{one_class}:test",
         words=["at least 2 class sub-folders", "found 1"]),
    case("hint-missing-imagefolder", "hint", "--teacher", "{teacher}", "--data", "imagefolder:{tmp}/nowhere",
         "-o", "{tmp}/h.safetensors", words=["nowhere", "no such folder"]),
    # -- outputs: missing folder, existing output without --force, the wrong kind of thing in the way
    case("label-output-folder-missing", "label", "{teacher}", "-o", "{tmp}/missing/l",
         words=["missing", "does not exist"]),
    case("distill-output-folder-missing", "distill", "--labels", "{labels}", "-o", "{tmp}/missing/s.safetensors",
         words=["missing", "does not exist"]),
    case("hint-output-folder-missing", "hint", "--teacher", "{teacher}", "-o", "{tmp}/missing/h.safetensors",
         words=["missing", "does not exist"]),
    case("distill-output-exists", "distill", "--labels", "{labels}", "-o", "{existing}",
         words=["{existing}", "--force"]),
    case("hint-output-exists", "hint", "--teacher", "{teacher}", "-o", "{existing}", words=["{existing}", "--force"]),
    case("label-output-is-a-file", "label", "{teacher}", "-o", "{existing}", "--force",
         words=["{existing}", "not a label folder"]),
    case("teach-output-is-a-folder", "teach", "-o", "{folder}", "--force", words=["{folder}", "is a folder"]),
    # -- options out of range or malformed
    case("teach-labeled-fewer-than-classes", "teach", "--labeled", "5", "-o", "{tmp}/t.safetensors",
         words=["--labeled 5", "10 classes"]),
    case("teach-unknown-part", "teach", "--part", "most", "-o", "{tmp}/t.safetensors", words=["unknown part 'most'"]),
    case("teach-arch-knob-absurd", "teach", "--arch", "fitnet-thin:width=1000000", "-o", "{tmp}/t.safetensors",
         words=["fitnet-thin", "width=1000000"]),
    case("teach-resize-absurd", "teach", "--resize", "100000", "-o", "{tmp}/t.safetensors",
         words=["--resize must be between 1 and 2048", "100000"]),
    case("label-part-without-partition", "label", "{teacher}", "--part", "labeled", "-o", "{tmp}/l",
         words=["--part labeled", "--labeled-per-class"]),
    case("distill-unlabeled-ratio-zero", "distill", "--labels", "{labels}", "--unlabeled-ratio", "0",
         "-o", "{tmp}/s.safetensors", words=["--unlabeled-ratio"]),
    case("hint-randaugment-magnitude", "hint", "--teacher", "{teacher}", "--randaugment", "2,99",
         "-o", "{tmp}/h.safetensors", words=["--randaugment", "'2,99'"]),
    case("label-tau-infinite", "label", "{teacher}", "--tau", "inf", "-o", "{tmp}/l", words=["--tau"]),
    case("distill-tau-infinite", "distill", "--teacher", "{teacher}", "--tau", "inf", "-o", "{tmp}/s.safetensors",
         words=["--tau"]),
    case("eval-unknown-device", "eval", "{teacher}", "--device", "tpu", words=["unknown device 'tpu'"]),
    case("info-nothing-to-show", "info", words=["give an artifact path"]),
    case("info-layers-unknown-arch", "info", "--layers", "cnn-xxl", words=["unknown architecture 'cnn-xxl'"]),
    case("label-shard-size-zero", "label", "{teacher}", "--shard-size", "0", "-o", "{tmp}/l",
         words=["--shard-size"], usage=True),
    case("label-topk-zero", "label", "{teacher}", "--topk", "0", "-o", "{tmp}/l", words=["--topk"], usage=True),
    case("distill-min-confidence-above-1", "distill", "--labels", "{labels}", "--min-confidence", "1.5",
         "-o", "{tmp}/s.safetensors", words=["--min-confidence"], usage=True),
    case("distill-balance-zero", "distill", "--labels", "{labels}", "--balance", "0", "-o", "{tmp}/s.safetensors",
         words=["--balance"], usage=True),
    case("hint-batch-size-zero", "hint", "--teacher", "{teacher}", "--batch-size", "0", "-o", "{tmp}/h.safetensors",
         words=["--batch-size"], usage=True),
    case("eval-batch-size-not-a-number", "eval", "{teacher}", "--batch-size", "many",
         words=["--batch-size"], usage=True),
    case("teach-label-smoothing-above-1", "teach", "--label-smoothing", "1.5", "-o", "{tmp}/t.safetensors",
         words=["--label-smoothing"], usage=True),
    case("teach-config-not-yaml", "teach", "--config", "{bad_yaml}", "-o", "{tmp}/t.safetensors",
         words=["--config", "YAML"], usage=False),
    case("label-config-not-a-mapping", "label", "{teacher}", "--config", "{list_yaml}", "-o", "{tmp}/l",
         words=["--config", "mapping"], usage=False),
]


# ---- the inputs --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """Good artifacts made by dpl itself: a digits teacher, its labels, and a teacher for a 3-class imagefolder.
    One epoch each (conftest's `teacher` trains for 8): a refusal needs a valid checkpoint, not a good one."""
    root = tmp_path_factory.mktemp("bad-inputs")
    teacher = root / "teacher.safetensors"
    r = dpl("teach", "--arch", "cnn-s", "--epochs", "1", "--batch-size", "256", "--device", "cpu", "-o", teacher)
    assert r.code == 0, r
    labels = root / "labels"
    assert dpl("label", teacher, "--shard-size", "700", "--device", "cpu", "-o", labels).code == 0
    images = write_imagefolder(root / "images", size=8, splits=(None,))
    images_teacher = root / "images-teacher.safetensors"
    r = dpl("teach", "--data", f"imagefolder:{images}", "--arch", "cnn-s", "--epochs", "1", "--device", "cpu",
            "-o", images_teacher)
    assert r.code == 0, r
    return {"teacher": teacher, "labels": labels, "shard": labels / "shard-00000-00000.safetensors",
            "images": images, "images_teacher": images_teacher}


def _no_images(d: Path) -> Path:
    for name in ("cat", "dog"):
        (d / "no-images" / name).mkdir(parents=True)
        (d / "no-images" / name / "notes.txt").write_text("no pictures here\n")
    return d / "no-images"


def _unreadable(d: Path) -> Path:
    root = write_imagefolder(d / "unreadable", size=8, per_class=2, splits=(None,))
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return root


def _all_unreadable(d: Path) -> Path:
    for name in ("cat", "dog"):
        (d / "all-unreadable" / name).mkdir(parents=True)
        (d / "all-unreadable" / name / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
        (d / "all-unreadable" / name / "b.jpg").write_bytes(b"")
    return d / "all-unreadable"


def _bomb(d: Path) -> Path:
    """An imagefolder with a 68-byte PNG that announces 30000x30000 pixels."""
    root = write_imagefolder(d / "bomb-images", size=8, per_class=2, splits=(None,))
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    idat = b"IDAT" + zlib.compress(b"\0" * 16)
    chunks = [struct.pack(">I", len(c) - 4) + c + struct.pack(">I", zlib.crc32(c)) for c in (ihdr, idat, b"IEND")]
    (root / "cat" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks))
    return root


def _corrupt_idx(d: Path) -> Path:
    """A $DPL_DATA whose fashion-mnist images file is gzip with a damaged deflate stream."""
    folder = d / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    images = gzip.compress(b"\0\0\x08\x03" + struct.pack(">III", 2, 28, 28) + bytes(2 * 28 * 28))
    labels = gzip.compress(b"\0\0\x08\x01" + struct.pack(">I", 2) + bytes(2))
    damaged = images[:12] + bytes(b ^ 0xFF for b in images[12:30]) + images[30:]
    (folder / "train-images-idx3-ubyte.gz").write_bytes(damaged)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(labels)
    return d / "data"


def _write(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


MAKERS = {   # bad inputs, made in the case's own folder when its arguments mention them
    "text": lambda d: _write(d / "notes.txt", "these are not the weights you are looking for\n"),
    "empty": lambda d: _write(d / "empty.safetensors", ""),
    "fake_onnx": lambda d: _write(d / "model.onnx", "not a protobuf at all \xff\n"),
    "folder": lambda d: (d / "folder").mkdir() or d / "folder",
    "existing": lambda d: _write(d / "existing.safetensors", "an earlier result\n"),
    "no_images": _no_images,
    "unreadable": _unreadable,
    "all_unreadable": _all_unreadable,
    "bomb": _bomb,
    "corrupt_idx": _corrupt_idx,
    "one_class": lambda d: write_imagefolder(d / "one-class", classes=("cat",), size=8),
    "bad_yaml": lambda d: _write(d / "bad.yaml", "epochs: [1, 2\narch: : cnn-s\n"),
    "list_yaml": lambda d: _write(d / "list.yaml", "- epochs\n- 3\n"),
}


# ---- the corpus --------------------------------------------------------------------------------------

@pytest.fixture
def fresh_sources():
    """Sources are cached per process: a case that changes $DPL_DATA must not see (or leave) cached data."""
    data._load_source.cache_clear()
    yield
    data._load_source.cache_clear()


@pytest.mark.parametrize("args,words,usage,env", CASES)
def test_bad_input_is_refused_cleanly_and_writes_nothing(shared, tmp_path, monkeypatch, request,
                                                         args, words, usage, env):
    folder = tmp_path / "case"
    folder.mkdir()
    monkeypatch.chdir(folder)
    inputs = Placeholders(shared, folder, MAKERS)
    args = [a.format_map(inputs) for a in args]
    words = [w.format_map(inputs) for w in words]
    if env:
        request.getfixturevalue("fresh_sources")
        for name, value in env.items():
            monkeypatch.setenv(name, value.format_map(inputs))
    before = listing(folder, shared["labels"].parent)
    result = dpl(*args)
    (assert_usage_error if usage else assert_refused)(result, *words)
    assert listing(folder, shared["labels"].parent) == before


def test_the_corpus_covers_every_command_with_30_cases_or_more():
    commands = {c.values[0][0] for c in CASES}
    assert {"teach", "label", "distill", "hint", "eval", "info"} <= commands
    assert len(CASES) >= 30


@pytest.mark.parametrize("maker, name", [(_unreadable, "dog/broken.png"), (_bomb, "cat/bomb.png")])
def test_an_unreadable_file_inside_a_usable_folder_is_skipped_and_recorded(tmp_path, maker, name):
    out = tmp_path / "t.safetensors"
    r = dpl("teach", "--data", f"imagefolder:{maker(tmp_path)}", "--arch", "cnn-s", "--epochs", "1",
            "--device", "cpu", "-o", out)
    assert r.code == 0 and f"skipped 1 unreadable image files (first: {name})" in r.stderr, r
    made = artifacts.read_header(out).meta["data"]
    assert made["skipped"] == 1 and made["skipped_files"] == [name] and made["n"] == 6
