"""dpl report: a tiny Noisy Student pipeline on digits, its HTML page, and that page opened in a real browser."""

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import assert_refused, dpl, write_photos

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """model0 (teach) -> labels0 -> model1 (distill) in one folder, plus labels of a pool without ground truth
    and a safetensors file that is not dpl's."""
    out = tmp_path_factory.mktemp("pipeline")
    cpu = ("--device", "cpu")
    steps = [
        ("teach", "--data", "digits", "--labeled-per-class", "10", "--arch", "cnn-s", "--epochs", "2",
         "--batch-size", "32", *cpu, "-o", out / "model0.safetensors"),
        ("label", out / "model0.safetensors", *cpu, "-o", out / "labels0"),
        ("distill", "--labels", out / "labels0", "--arch", "cnn-s", "--epochs", "1", *cpu, "-o", out / "model1.safetensors"),
        ("label", out / "model1.safetensors", "--data", f"imagefolder:{write_photos(out / 'pool', per_class=3, flat=True)}",
         *cpu, "-o", out / "pool-labels"),
    ]
    for args in steps:
        r = dpl(*args)
        assert r.code == 0, r
    from safetensors.torch import save_file
    import torch
    save_file({"w": torch.zeros(2)}, str(out / "foreign.safetensors"))
    return out


@pytest.fixture(scope="module")
def written(pipeline) -> tuple[Path, str]:
    page = pipeline / "report.html"
    r = dpl("report", pipeline, "-o", page, "--device", "cpu")
    assert r.code == 0, r
    assert r.stdout.strip() == str(page)
    return page, r.stderr


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install chromium; `make test` installs it when run as root)")
    with sync_api.sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        launched = p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield launched
        launched.close()


def test_report_opens_in_a_browser_with_every_figure_and_nothing_fetched(written, browser):
    page_path, _ = written
    page = browser.new_page()
    errors, fetched = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r):
        if r.request.url.startswith(("data:", "file:")):
            r.continue_()
        else:
            fetched.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(page_path.as_uri(), wait_until="load")
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
    assert len(images) >= 6, images          # lineage, curves, two label folders, reliability, confusion
    assert all(complete and width > 0 for _, complete, width in images), images
    assert page.eval_on_selector_all("img", "els => els.every(e => e.src.startsWith('data:image/'))")
    assert errors == [] and fetched == []
    page.close()


def test_table_values_are_exactly_those_of_dpl_eval_json(written, pipeline, browser):
    page_path, _ = written
    page = browser.new_page()
    page.goto(page_path.as_uri(), wait_until="load")
    rows = page.eval_on_selector_all("#models tbody tr", """rows => rows.map(r => [r.dataset.checkpoint,
        Object.fromEntries([...r.querySelectorAll('td[data-metric]')].map(td => [td.dataset.metric, td.dataset.value]))])""")
    page.close()
    assert [Path(c).name for c, _ in rows] == ["model0.safetensors", "model1.safetensors"]
    for checkpoint, shown in rows:
        r = dpl("eval", checkpoint, "--json", "--device", "cpu")
        assert r.code == 0, r
        measured = json.loads(r.stdout)
        for key in ("top1", "top5", "nll", "ece"):
            assert float(shown[key]) == measured[key], (checkpoint, key)


class _Tags(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"}

    def __init__(self):
        super().__init__()
        self.open, self.problems, self.seen = [], [], []

    def handle_starttag(self, tag, attrs):
        self.seen.append(tag)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.problems.append(tag)


def test_report_is_one_well_formed_page_with_every_section(written):
    page_path, stderr = written
    text = page_path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    tags = _Tags()
    tags.feed(text)
    assert tags.problems == [] and tags.open == []
    assert "script" not in tags.seen and "link" not in tags.seen and "http://" not in text.replace(
        "http://www.w3.org/", "")                # matplotlib's SVG namespaces are names, not fetches
    for section in ("models", "lineage", "curves", "labels", "reliability"):
        assert f'<section id="{section}">' in text, section
    assert "<pre>model0.safetensors: dpl" in text      # the models' commands (in-process: pytest's own argv, empty under xdist)
    assert "No ground truth" in text                                       # the pool's labels: histogram only
    assert "foreign.safetensors" in stderr and "not a dpl artifact" in stderr
    assert '<tr class="last" data-checkpoint="' + str(page_path.parent / "model1.safetensors") in text


def test_artifacts_named_one_by_one(pipeline, tmp_path):
    page = tmp_path / "r.html"
    r = dpl("report", pipeline / "model0.safetensors", pipeline / "labels0", "-o", page, "--device", "cpu")
    assert r.code == 0, r
    text = page.read_text()
    assert "model0.safetensors" in text and "model1.safetensors" not in text and "labels0" in text
    r = dpl("report", pipeline / "pool-labels", "-o", page, "--force")          # a label folder alone
    assert r.code == 0, r
    text = page.read_text()
    assert "pool-labels" in text and "No ground truth" in text and '<section id="models">' not in text


def test_bad_input_writes_nothing(pipeline, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = tmp_path / "r.html"
    assert_refused(dpl("report", empty, "-o", page), "no dpl checkpoints or label folders")
    assert_refused(dpl("report", tmp_path / "missing", "-o", page), "no such file")
    assert_refused(dpl("report", pipeline, "-o", tmp_path / "nowhere" / "r.html"), "does not exist")
    assert_refused(dpl("report", pipeline, "-o", empty, "--force"), "is a folder")
    assert_refused(dpl("report", pipeline / "foreign.safetensors", "-o", page), "not a dpl artifact")
    assert not page.exists() and list(empty.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    page.write_text("mine")
    assert_refused(dpl("report", pipeline, "-o", page), "exists", "--force")
    assert page.read_text() == "mine"
