# The two set-up commands of the README: `make demo` and `make test`. Python 3.11+ and apt are all they need.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= demo
# Absolute: the recipes run in their own folders.
DPL     = $(abspath $(BIN))/dpl
RUN     = $(abspath $(OUT))

.PHONY: demo test test-fast install data browser ffmpeg docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,tensorboard,video,export,timm]'
	touch $@

# Fashion-MNIST from Debian (the slow tests use it; they skip where it cannot be had).
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "not root: install dataset-fashion-mnist yourself for the Fashion-MNIST tests"; fi; fi

# Debian's chromium, for the test that opens `dpl report`'s page in a real browser (it skips without).
browser:
	@if ! command -v chromium > /dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq chromium > /dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq chromium; } \
	    || echo "could not install chromium: the report's browser test will skip"; \
	  else echo "not root: the report's browser test will skip (apt-get install chromium to run it)"; fi; fi

# The main job on the embedded digits data: the Noisy Student loop (teacher, then 3 noised students),
# ending with a table of every model's test accuracy and the path of its HTML report. The README's table is this
# table's top1 column; .ci/run runs .ci/check_demo.py on what this prints to keep the two within its tolerance.
demo: install
	$(MAKE) -C recipes/noisy-student DPL=$(DPL) OUT=$(RUN) all report

# The documentation figures, from a real run of the demo (reused when up to date): the Noisy Student
# iterations, the training curves, the report and a screenshot of it.
docs: install browser
	$(MAKE) -C recipes/noisy-student DPL=$(DPL) OUT=$(RUN) all
	$(DPL) plot lineage $$(ls $(RUN)/model*.safetensors | sort -V | tail -n 1) -o docs/lineage --force
	$(DPL) plot curves $$(ls $(RUN)/model*.safetensors | sort -V) -o docs/curves --force
	$(DPL) report $(RUN) -o docs/report.html --force --title "dpl report: make demo (Noisy Student on digits)"
	$(BIN)/python docs/screenshot.py docs/report.html docs/report.png

# Debian's FFmpeg, whose shared libraries torchcodec decodes video files with (PyAV, installed, is the fallback).
ffmpeg:
	@if ! ldconfig -p 2>/dev/null | grep -q libavcodec; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq ffmpeg > /dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq ffmpeg > /dev/null; } \
	    || echo "could not install ffmpeg: video clips decode through PyAV"; \
	  else echo "not root: video clips decode through PyAV (apt-get install ffmpeg for torchcodec)"; fi; fi

# A worker per core (pytest-xdist; each computes on one thread, tests/conftest.py), whole test files per worker so
# module fixtures are made once; the 15 slowest tests printed, so that they stay visible.
test: install data browser ffmpeg
	$(BIN)/pytest -q -n auto --dist loadfile --durations 15

# The inner loop: the unit tests, without the end-to-end runs of whole commands (marked e2e) and Fashion-MNIST (slow).
test-fast: install
	$(BIN)/pytest -q -n auto --dist loadfile -m 'not slow and not e2e'

clean:
	rm -rf $(OUT) build *.egg-info
