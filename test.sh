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
exec .venv/bin/python -m pytest "$@"
