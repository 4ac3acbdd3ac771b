"""Install tiers: ``make install`` installs what serving needs (what LocalAI's install path
runs), ``make test`` adds the dev tools, and the CPU build asks PyTorch's CPU index only
when it answers (scripts/torch_index.py). ``make -n`` prints the recipes without running
them; a fresh VENV makes every step out of date, so all of them print.
"""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TORCH_INDEX_SCRIPT = REPO_ROOT / "scripts" / "torch_index.py"
DEV_TOOLS = ("pytest", "ruff", "grpcurl", "markdown-it-py")
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make_n(tmp_path: Path, *argv: str) -> list[str]:
    """The pip install commands ``make -n`` prints (the pip self-upgrade left out)."""
    out = subprocess.run(["make", "-n", *argv, f"VENV={tmp_path / 'venv'}"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines()
            if "pip install" in line and "--upgrade pip" not in line]


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


@pytest.mark.parametrize("build_type", ["cpu", "cuda", "hipblas", "intel", "mps"])
def test_serving_requirements_hold_no_dev_tool(build_type):
    names = requirement_names(REPO_ROOT / f"requirements-{build_type}.txt")
    assert "torch" in names
    assert not {tool for tool in DEV_TOOLS if any(n.startswith(tool) for n in names)}


def test_dev_requirements_hold_the_dev_tools():
    names = requirement_names(REPO_ROOT / "requirements-dev.txt")
    assert {"pytest", "ruff", "markdown-it-py"} <= names


@needs_make
def test_the_cpu_build_asks_the_cpu_torch_index_and_others_ask_none(tmp_path):
    cpu = make_n(tmp_path, "install")[0]
    assert 'scripts/torch_index.py "https://download.pytorch.org/whl/cpu"' in cpu
    mirror = make_n(tmp_path, "install", "TORCH_INDEX=https://mirror.example/whl/cpu")[0]
    assert 'torch_index.py "https://mirror.example/whl/cpu"' in mirror
    assert 'torch_index.py ""' in make_n(tmp_path, "install", "TORCH_INDEX=")[0]
    assert 'torch_index.py ""' in make_n(tmp_path, "install", "BUILD_TYPE=cuda")[0]


def torch_index(url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TORCH_INDEX_SCRIPT), url], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture()
def index_server():
    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html><a href='torch/'>torch</a></html>")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    server.shutdown()


def test_an_index_that_answers_is_added(index_server):
    result = torch_index(index_server)
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"--extra-index-url {index_server}\n", "")


def test_an_index_folder_on_disk_is_added(tmp_path):
    result = torch_index(tmp_path.as_uri())
    assert result.stdout == f"--extra-index-url {tmp_path.as_uri()}\n"


def test_an_index_that_does_not_answer_is_left_out_with_a_note():
    with __import__("socket").socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/whl/cpu"
    started = time.monotonic()
    result = torch_index(url)
    assert time.monotonic() - started < 30
    assert (result.returncode, result.stdout) == (0, "")
    assert f"torch index {url} not reachable" in result.stderr
    assert "TORCH_INDEX" in result.stderr


def test_no_index_asks_nothing():
    assert (torch_index("").stdout, torch_index("").stderr) == ("", "")


def test_the_client_is_a_console_command():
    """pyproject's [project.scripts] (read as text: tomllib is Python 3.11+)."""
    scripts = (REPO_ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1]
    entry = re.search(r'^diffusers-client = "([^"]+)"$', scripts.split("\n[", 1)[0], re.M)
    assert entry, "pyproject.toml declares no diffusers-client command"
    module, _, function = entry.group(1).partition(":")
    assert (module, function) == ("diffusers_backend.serving.client", "run")
    from diffusers_backend.serving import client

    assert callable(client.run)
