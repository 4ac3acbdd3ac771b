"""LocalAI's own dynamic-loader tests (its ``backend/python/diffusers/test.py``), unchanged,
run in a separate pytest process against our diffusers_dynamic_loader.py, when
``LOCALAI_SRC`` points at a LocalAI checkout (no checkout is available offline, so it is
skipped otherwise). The name helpers those tests call are pinned in process in
tests/unit/test_localai_loader_compat.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCALAI_TEST = Path("backend/python/diffusers/test.py")


def _localai_test_file() -> Path | None:
    src = os.environ.get("LOCALAI_SRC", "").strip()
    if not src:
        return None
    path = Path(src).expanduser() / LOCALAI_TEST
    return path if path.is_file() else None


@pytest.mark.skipif(_localai_test_file() is None,
                    reason="set LOCALAI_SRC to a LocalAI checkout to run its loader tests "
                           "(its backend/python/diffusers/test.py) against our module")
def test_localai_loader_tests_pass_against_our_module(tmp_path):
    """LocalAI's own dynamic-loader test classes, unchanged, with our module importable.

    The file is copied out of the checkout first: run in place, Python would put LocalAI's
    folder (and its own diffusers_dynamic_loader.py) first on the import path.
    """
    test_file = _localai_test_file()
    assert test_file is not None
    shutil.copyfile(test_file, tmp_path / "test.py")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "test.py", "-q", "-p", "no:cacheprovider",
         "-k", "TestDiffusersDynamicLoader"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
