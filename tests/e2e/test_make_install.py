"""The Makefile, run as ``make -n`` (it prints the recipes without running them; a fresh
VENV makes every step out of date, so all of them print): every make command the README
names is a real target; ``make install`` installs what serving needs from the BUILD_TYPE's
requirements file (docs/install.md's table) and the client, ``make test`` adds the dev tools
after it, and the CPU build asks PyTorch's CPU index (scripts/torch_index.py).

The requirements files themselves, read in process, are tested in
tests/unit/test_build_types.py and tests/unit/test_install_tiers.py.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _readme_build_types() -> list[str]:
    text = (REPO_ROOT / "docs" / "install.md").read_text()
    table = text.split("| `BUILD_TYPE` |", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `([a-z0-9]+)`", table, flags=re.M)


BUILD_TYPES = _readme_build_types()


def _readme_make_commands() -> list[list[str]]:
    """Each ``make`` command line of the README's bash blocks, split like a shell does
    (``make -C`` left out: it runs elsewhere)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(README.read_text())
    out = []
    for fence in (t for t in tokens if t.type == "fence" and t.info.strip() == "bash"):
        for line in fence.content.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(shlex.split(line))
    return [c for c in out if c[0] == "make" and "-C" not in c]


README_MAKE = _readme_make_commands()


def make_n(tmp_path: Path, *argv: str) -> list[str]:
    """The pip install commands ``make -n`` prints (the pip self-upgrade left out)."""
    out = subprocess.run(["make", "-n", *argv, f"VENV={tmp_path / 'venv'}"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines()
            if "pip install" in line and "--upgrade pip" not in line]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("argv", README_MAKE, ids=lambda c: " ".join(c))
def test_readme_make_targets_exist(argv, tmp_path):
    """``make -n`` prints the recipe without running it; an unknown target fails."""
    result = subprocess.run([*argv, "-n", f"VENV={tmp_path / 'venv'}"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


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


@needs_make
def test_make_install_installs_what_serving_needs_and_the_client(tmp_path):
    installs = make_n(tmp_path, "install")
    assert any("-r requirements-cpu.txt" in line for line in installs)
    assert not any("requirements-dev.txt" in line for line in installs)
    assert any(line.endswith("-e .") or "-e . " in line for line in installs), installs


@needs_make
def test_make_test_adds_the_dev_tools_after_the_serving_install(tmp_path):
    installs = make_n(tmp_path, "test")
    serving = next(i for i, line in enumerate(installs) if "-r requirements-cpu.txt" in line)
    dev = next(i for i, line in enumerate(installs) if "-r requirements-dev.txt" in line)
    assert serving < dev


@needs_make
def test_the_cpu_build_asks_the_cpu_torch_index_and_others_ask_none(tmp_path):
    cpu = make_n(tmp_path, "install")[0]
    assert 'scripts/torch_index.py "https://download.pytorch.org/whl/cpu"' in cpu
    mirror = make_n(tmp_path, "install", "TORCH_INDEX=https://mirror.example/whl/cpu")[0]
    assert 'torch_index.py "https://mirror.example/whl/cpu"' in mirror
    assert 'torch_index.py ""' in make_n(tmp_path, "install", "TORCH_INDEX=")[0]
    assert 'torch_index.py ""' in make_n(tmp_path, "install", "BUILD_TYPE=cuda")[0]
