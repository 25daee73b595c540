# leo-launch: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# msrun starts workers with the `python` found first on PATH: make it the venv's.
export PATH := $(BIN):$(PATH)
# MindSpore's C++ logging: warnings and errors only.
export GLOG_v ?= 2

.PHONY: install test lint bench-core bench-launcher clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test,report]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check launcher leo_core tests

bench-core: install
	$(BIN)/python tests/benchmarks/bench_core.py

bench-launcher: install
	$(BIN)/python tests/benchmarks/bench_launcher.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
