# Two commands on a fresh machine: `make run` serves, `make test` tests.
PYTHON ?= python3
VENV ?= .venv
BUILD_TYPE ?= cpu
ADDR ?= 127.0.0.1:50051
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(BUILD_TYPE)

# BUILD_TYPE picks requirements-$(BUILD_TYPE).txt (cpu, cuda, hipblas, intel, mps), as
# LocalAI's backends do; an unknown value stops here rather than installing the CPU build.
BUILD_TYPES := cpu cuda hipblas intel mps
ifeq ($(filter $(BUILD_TYPE),$(BUILD_TYPES)),)
$(error unknown BUILD_TYPE=$(BUILD_TYPE); use one of: $(BUILD_TYPES))
endif
REQS := requirements-$(BUILD_TYPE).txt

.PHONY: install protogen run test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) $(REQS) requirements.txt requirements-dev.txt
	$(PY) -m pip install --quiet -r $(REQS) -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP) protogen

protogen: backend_pb2.py backend_pb2_grpc.py

backend_pb2.py backend_pb2_grpc.py: backend.proto $(STAMP)
	$(PY) -m diffusers_backend.serving.protogen --force

run: install
	exec ./run.sh --addr $(ADDR)

test: install
	./test.sh

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) bench/bench_registry.py
	$(PY) bench/bench_server.py

clean:
	rm -rf backend_pb2.py backend_pb2_grpc.py .pytest_cache .ruff_cache
