"""Every BUILD_TYPE docs/install.md lists has its requirements file.

Only the CPU build can be installed on the build machine; this checks the packaging for the
others: the right file, torch pinned to the version the CPU build tests, the shared
requirements included. That make installs from it (`make -n`) is tested in
tests/e2e/test_make_install.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _readme_build_types() -> list[str]:
    text = (REPO_ROOT / "docs" / "install.md").read_text()
    table = text.split("| `BUILD_TYPE` |", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `([a-z0-9]+)`", table, flags=re.M)


BUILD_TYPES = _readme_build_types()


def test_readme_lists_the_build_types():
    assert set(BUILD_TYPES) >= {"cpu", "cuda", "hipblas", "intel", "mps"}


def _torch_pin(path: Path) -> str:
    lines = [line.strip() for line in path.read_text().splitlines()]
    pins = [line for line in lines if line.startswith("torch==")]
    assert len(pins) == 1, f"{path.name} must pin torch exactly once"
    assert "-r requirements.txt" in lines, f"{path.name} must include requirements.txt"
    return pins[0]


@pytest.mark.parametrize("build_type", BUILD_TYPES)
def test_build_type_has_its_requirements_file(build_type):
    path = REPO_ROOT / f"requirements-{build_type}.txt"
    assert path.is_file()
    assert _torch_pin(path) == _torch_pin(REPO_ROOT / "requirements-cpu.txt")
    index = [line for line in path.read_text().splitlines() if "index-url" in line]
    if build_type in {"hipblas", "intel"}:  # wheels only on PyTorch's own index
        assert index and "download.pytorch.org/whl/" in index[0]
        assert not index[0].startswith("--index-url")  # PyPI stays for the rest


