"""Install tiers, read from the requirements files and pyproject.toml: serving's requirements
(what ``make install`` and LocalAI's install path install) hold no dev tool, the dev
requirements (what ``make test`` adds) hold them all, and the client is a console command.
What make itself runs is tested in tests/e2e/test_make_install.py, the CPU torch index
probe in tests/e2e/test_torch_index.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_TOOLS = ("pytest", "ruff", "grpcurl", "markdown-it-py")


def requirement_names(path: Path) -> set[str]:
    """Package names a requirements file installs, following ``-r`` includes."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= requirement_names(path.parent / line[3:].strip())
        elif line and not line.startswith("-"):
            names.add(line.split("==", 1)[0].split("[", 1)[0].strip().lower())
    return names


@pytest.mark.parametrize("build_type", ["cpu", "cuda", "hipblas", "intel", "mps"])
def test_serving_requirements_hold_no_dev_tool(build_type):
    names = requirement_names(REPO_ROOT / f"requirements-{build_type}.txt")
    assert "torch" in names
    assert not {tool for tool in DEV_TOOLS if any(n.startswith(tool) for n in names)}


def test_dev_requirements_hold_the_dev_tools():
    names = requirement_names(REPO_ROOT / "requirements-dev.txt")
    assert {"pytest", "ruff", "markdown-it-py"} <= names


def test_the_client_is_a_console_command():
    """pyproject's [project.scripts] (read as text: tomllib is Python 3.11+)."""
    scripts = (REPO_ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1]
    entry = re.search(r'^diffusers-client = "([^"]+)"$', scripts.split("\n[", 1)[0], re.M)
    assert entry, "pyproject.toml declares no diffusers-client command"
    module, _, function = entry.group(1).partition(":")
    assert (module, function) == ("diffusers_backend.serving.client", "run")
    from diffusers_backend.serving import client

    assert callable(client.run)
