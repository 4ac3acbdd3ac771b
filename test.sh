#!/usr/bin/env bash
# Lint, type-check, then the whole test suite (offline: tests build tiny pipelines themselves).
# ./test.sh --fast: only tests/unit without the slow tests (`make test-fast`).
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false
if [[ "${1:-}" == "--fast" ]]; then  # make test-fast: the unit tier, no lint, under a minute
    shift
    exec .venv/bin/python -m pytest tests/unit -m "not slow" "$@"
fi
.venv/bin/ruff check .
.venv/bin/mypy  # strict on the package; configured in pyproject.toml
# pytest-xdist: one worker more than the cores (a worker often waits on a server it
# started), at most 6 (each may hold a server and its models in memory); TEST_WORKERS=0
# runs in this process. A module stays on one worker (loadfile), so its shared server
# starts once.
workers=${TEST_WORKERS:-$(( $(nproc) + 1 > 6 ? 6 : $(nproc) + 1 ))}
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
