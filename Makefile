# Two commands on a fresh machine: `make run` serves, `make test` tests.
PYTHON ?= python3
VENV ?= .venv
BUILD_TYPE ?= cpu
ADDR ?= 127.0.0.1:50051
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(BUILD_TYPE)

ifeq ($(BUILD_TYPE),cuda)
REQS := requirements-cuda.txt
else
REQS := requirements-cpu.txt
endif

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
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. backend.proto

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
