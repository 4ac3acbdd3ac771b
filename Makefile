# Two commands on a fresh machine: `make run` serves, `make test` tests.
PYTHON ?= python3
VENV ?= .venv
BUILD_TYPE ?= cpu
ADDR ?= 127.0.0.1:50051
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(BUILD_TYPE)
DEV_STAMP := $(VENV)/.installed-dev

# BUILD_TYPE picks requirements-$(BUILD_TYPE).txt, as LocalAI's backends do; cublas and l4t
# are the names LocalAI's images export (cublas = the cuda build; l4t = Jetson, untested).
# An unknown value stops here rather than installing the CPU build.
BUILD_TYPES := cpu cuda cublas hipblas intel mps l4t
ifeq ($(filter $(BUILD_TYPE),$(BUILD_TYPES)),)
$(error unknown BUILD_TYPE=$(BUILD_TYPE); use one of: $(BUILD_TYPES))
endif
REQS := requirements-$(BUILD_TYPE).txt

# TORCH_INDEX: an extra pip index for torch, used when it answers (scripts/torch_index.py
# asks it first; otherwise pip's own indexes serve). CPU: PyTorch's CPU-only wheels, much
# smaller than PyPI's CUDA builds. `make install TORCH_INDEX=URL` names a mirror,
# `TORCH_INDEX=` skips it. PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS apply as usual.
ifeq ($(BUILD_TYPE),cpu)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
endif

.PHONY: install protogen run demo test test-fast lint typecheck bench clean chromium

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# What serving needs (LocalAI's install path runs `make install`), then the project itself,
# editable, which puts the `diffusers-client` command into $(VENV)/bin.
$(STAMP): $(PY) $(REQS) requirements.txt pyproject.toml
	$(PY) -m pip install --quiet $$($(PY) scripts/torch_index.py "$(TORCH_INDEX)") -r $(REQS)
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --no-deps -e .  # (no editable-install notice)
	touch $(STAMP)

# Test and lint tools, for `make test` and `make lint` only.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(DEV_STAMP)

install: $(STAMP) protogen

protogen: backend_pb2.py backend_pb2_grpc.py progress_pb2.py progress_pb2_grpc.py

backend_pb2.py backend_pb2_grpc.py progress_pb2.py progress_pb2_grpc.py: backend.proto progress.proto $(STAMP)
	$(PY) -m diffusers_backend.serving.protogen --force

run: install
	exec ./run.sh --addr $(ADDR)

# Offline: a tiny random-weight model into ./models, served, loaded, drawn into demo.png.
demo: install
	$(PY) scripts/demo.py

test: install $(DEV_STAMP) chromium
	./test.sh

# The live page's browser test (tests/e2e/test_live_page.py) needs Chromium: Debian's
# package, installed here when missing (as root, or through sudo); without it that test skips.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ command -v apt-get >/dev/null 2>&1 && \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ) && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; } || \
	echo "note: Chromium is not installed; tests/e2e/test_live_page.py will skip"

# The unit tier (tests/unit, in process, slow tests left out): under a minute.
test-fast: install $(DEV_STAMP)
	./test.sh --fast

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

# mypy, strict on the package (pyproject.toml [tool.mypy]); test.sh runs it after ruff.
typecheck: $(DEV_STAMP)
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/bench_registry.py
	$(PY) bench/bench_server.py

clean:
	rm -rf backend_pb2.py backend_pb2_grpc.py progress_pb2.py progress_pb2_grpc.py .pytest_cache .ruff_cache
