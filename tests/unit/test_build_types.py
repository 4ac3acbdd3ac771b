"""Every BUILD_TYPE docs/install.md lists has its requirements file, and make installs from it.

Only the CPU build can be installed on the build machine; this checks the packaging
(`make -n`, nothing runs) for the others: the right file, torch pinned to the version the
CPU build tests, the shared requirements included.
"""

from __future__ import annotations

import re
import shutil
import subprocess
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


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("build_type", BUILD_TYPES)
def test_make_install_picks_the_build_types_file(build_type, tmp_path):
    """A fresh VENV makes every step out of date, so -n prints the real pip command."""
    out = subprocess.run(["make", "-n", "install", f"BUILD_TYPE={build_type}",
                          f"VENV={tmp_path / 'venv'}"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    installs = [line for line in out.splitlines() if "pip install" in line and " -r " in line]
    assert installs and f"-r requirements-{build_type}.txt" in installs[0]
    others = set(BUILD_TYPES) - {build_type}
    assert not any(f"requirements-{other}.txt" in installs[0] for other in others)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_unknown_build_type_stops_make(tmp_path):
    result = subprocess.run(["make", "-n", "install", "BUILD_TYPE=vulkan", f"VENV={tmp_path}"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "unknown BUILD_TYPE=vulkan" in result.stderr
