import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dpl.cli.main import app

# Under pytest-xdist (`make test` runs a worker per core) each worker computes on one thread, and so do the processes
# its tests start: workers of several OpenMP threads each would spin on more threads than there are cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(
    not FASHION.exists() and not (Path(os.environ.get("DPL_DATA", "/nonexistent")) / "fashion-mnist").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


class Result:
    def __init__(self, code, stdout, stderr, exception=None):
        self.code, self.stdout, self.stderr, self.exception = code, stdout, stderr, exception

    def __repr__(self):
        return f"<exit {self.code}\nstdout: {self.stdout}\nstderr: {self.stderr}\nexception: {self.exception!r}>"


def dpl(*args) -> Result:
    """Run the CLI in-process (fast); the result carries exit code, stdout, stderr."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    exception = None if isinstance(result.exception, SystemExit) else result.exception
    return Result(result.exit_code, result.stdout, result.stderr, exception)


def dpl_process(*args, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed `dpl` console script as a separate process."""
    exe = Path(sys.executable).with_name("dpl")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, **kwargs)


def assert_refused(result: Result, *words: str) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback."""
    assert result.code == 2, result
    assert result.exception is None, result
    assert "Traceback" not in result.stderr, result
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result
    for w in words:
        assert w in lines[0], (w, result)


def assert_usage_error(result: Result, *words: str) -> None:
    """typer's own refusal of a malformed option: exit 2, the option named, no traceback."""
    assert result.code == 2, result
    assert result.exception is None and "Traceback" not in result.stderr, result
    for w in words:
        assert w in result.stderr, (w, result)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small tensors: about as fast, and clear of other work on a shared machine
    (use with pytestmark = pytest.mark.usefixtures("one_thread"))."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def teacher(tmp_path_factory) -> Path:
    """A small cnn-s trained on digits, shared by the tests that need a checkpoint."""
    out = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    r = dpl("teach", "--arch", "cnn-s", "--epochs", "8", "--device", "cpu", "-o", out)
    assert r.code == 0, r
    return out


def write_imagefolder(root: Path, classes=("cat", "dog", "owl"), per_class=6, size=12, mode="L", splits=("train", "test")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                shape = (size, size) if mode == "L" else (size, size, 3)
                pixels = rng.integers(0, 60, shape, dtype=np.uint8) + np.uint8((60 * c) % 196)
                Image.fromarray(pixels, mode).save(folder / f"{i}.png")
    return root


def write_photos(root: Path, source: str = "digits", per_class: int = 20, flat: bool = False, start: int = 0,
                 classes: int = 10, seed: int = 0) -> Path:
    """Images of `source` exported as the photos a user has (the own-images recipe's RGB JPEGs of mixed sizes
    and aspect ratios), in class sub-folders classK, or all in one flat folder."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "recipes" / "own-images"))
    from export import write_photo

    from dpl.core import data

    ds = data.load(source)
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root if flat else root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(ds.labels.numpy() == c)[start: start + per_class]:
            write_photo(ds.images[i].numpy(), folder / f"{i:05d}.jpg", rng)
    return root


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and no network: a download fails at once."""
    import torch.hub
    from urllib.error import URLError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def cache_imagenet_weights(name: str, seed: int = 0) -> dict:
    """Put a seeded torchvision `name` (1000 classes, RGB) in the hub cache as its ImageNet weights."""
    import torch
    import torchvision

    from dpl.core import models

    torch.manual_seed(seed)
    state = getattr(torchvision.models, name)().state_dict()
    _, file = models.pretrained_file(name)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, file)
    return state


class Placeholders(dict):
    """The {placeholders} of a bad-input case: shared artifacts, the case folder as {tmp}, and bad inputs made
    in the case folder on first mention by `makers` (name -> function of the folder)."""

    def __init__(self, shared: dict[str, Path], folder: Path, makers: dict):
        super().__init__(shared, tmp=folder)
        self.folder, self.makers = folder, makers

    def __missing__(self, key):
        self[key] = self.makers[key](self.folder)
        return self[key]


def listing(*roots: Path) -> dict[str, tuple]:
    """Every file (size, mtime, and for small files a hash of the bytes) and folder under the roots: what a
    refused command must leave as it was."""
    seen = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            if p.is_symlink() or not p.exists():
                seen[str(p)] = ("link",)
            elif p.is_file():
                st = p.stat()
                digest = hashlib.sha1(p.read_bytes()).hexdigest() if st.st_size < (1 << 20) else None
                seen[str(p)] = (st.st_size, st.st_mtime_ns, digest)
            else:
                seen[str(p)] = ("folder",)
    return seen


# The test files whose end-to-end runs of whole commands (recipes, subprocesses, signals, torchrun, fuzzing) take
# most of the suite's time: `make test` runs them, `make test-fast` (-m 'not e2e') leaves them out.
E2E_FILES = {"test_distributed.py", "test_cli_label_distill.py", "test_cli_hint.py", "test_resume.py", "test_fuzz.py",
             "test_photos.py", "test_cli_teach_eval.py", "test_house.py", "test_timm.py", "test_ema.py", "test_semi.py",
             "test_pretrain.py", "test_refusals.py", "test_detect.py", "test_records.py", "test_export.py",
             "test_startup.py", "test_conventions.py", "test_plot.py", "test_workers.py", "test_plot_keypoints.py",
             "test_pretrained.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in E2E_FILES:
            item.add_marker(pytest.mark.e2e)
