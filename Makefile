# The two commands a newcomer runs: `make demo` and `make test`.
# Each creates .venv (Python 3.11+) and installs what it needs; nothing else is assumed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test stress bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Core only: the optimizer runs without torch.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e .
	@touch $@

# Tests export fixtures from torch (CPU build, an optional extra).
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[dev,torch]'
	@touch $@ $(VENV)/.core

$(VENV)/.bench: pyproject.toml | $(VENV)/.dev
	$(PIP) install --quiet -e '.[dev,torch,bench,plot]'
	@touch $@

demo: $(VENV)/.core
	$(BIN)/onnxopt demo

test: $(VENV)/.dev
	$(BIN)/ruff check onnxopt passes tests benchmarks
	$(BIN)/python -m pytest -q

stress: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m slow

bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks.run_all

lint: $(VENV)/.dev
	$(BIN)/ruff check onnxopt passes tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
