# Two commands on a fresh machine: `make demo` (set up + main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/repvit: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip uninstall -q -y repvit 2>/dev/null || true  # the distribution's name before it became repvit-pytorch
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/repvit

demo: setup
	$(BIN)/repvit info
	$(BIN)/repvit demo

test: setup
	$(BIN)/python -m pytest -q tests

.PHONY: setup demo test
