#!/usr/bin/env bash
# Start the backend the way LocalAI-style hosts do: `run.sh --addr 127.0.0.1:PORT`.
#
# Works from any working directory (LocalAI starts it from its own) and through a symlink.
# Interpreter, in order: the project's .venv (`make install`), a Python bundled beside this
# script (the backend-gallery image, see Dockerfile), else the first start sets up .venv
# with `make install` (a few minutes; its output goes to stderr, the host's log).
set -euo pipefail
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
cd "$here"

if [ -x .venv/bin/python ] && ls .venv/.installed-* >/dev/null 2>&1; then
  PY=.venv/bin/python
elif [ -x python/bin/python3 ]; then
  PY=python/bin/python3
else
  echo "diffusers backend: first start, installing into $here/.venv (BUILD_TYPE=${BUILD_TYPE:-cpu})" >&2
  make -C "$here" install BUILD_TYPE="${BUILD_TYPE:-cpu}" >&2
  PY=.venv/bin/python
fi

# Accelerator hints, as LocalAI's own backend scripts set them.
if [ -d /opt/intel ]; then export XPU="${XPU:-1}"; fi
if [ "$(uname -s)" = "Darwin" ]; then export PYTORCH_ENABLE_MPS_FALLBACK=1; fi

"$PY" -m diffusers_backend.serving.protogen  # stubs, when backend.proto is newer
exec "$PY" -m diffusers_backend "$@"
