#!/usr/bin/env bash
# Start the backend the way LocalAI-style hosts do: `run.sh --addr 127.0.0.1:PORT`.
set -euo pipefail
cd "$(dirname "$0")"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
if [ ! -f backend_pb2.py ] || [ backend.proto -nt backend_pb2.py ]; then
  "$PY" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. backend.proto
fi
exec "$PY" -m diffusers_backend "$@"
