# The two set-up commands of the README: `make demo` and `make test`. Python 3.11+ and apt are all they need.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= demo

.PHONY: demo test test-fast install data clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Fashion-MNIST from Debian (the slow tests use it; they skip where it cannot be had).
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "not root: install dataset-fashion-mnist yourself for the Fashion-MNIST tests"; fi; fi

# The main job on the embedded digits data: the Noisy Student loop (teacher, then 3 noised students),
# ending with a table of every model's test accuracy.
demo: install
	$(MAKE) -C recipes/noisy-student DPL=$(CURDIR)/$(BIN)/dpl OUT=$(CURDIR)/$(OUT)

test: install data
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m 'not slow'

clean:
	rm -rf $(OUT) build *.egg-info
