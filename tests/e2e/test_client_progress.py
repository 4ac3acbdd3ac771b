"""``diffusers-client`` with the Progress service, end to end against a real server with a
token: the step bar on a pseudo-terminal (pty), plain step lines and ``--preview`` when
stderr is a file, and ``watch --dst --json`` following another client's request."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest
from harness import REPO_ROOT, start_backend
from PIL import Image

TOKEN = "client-progress-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd):
    backend = start_backend(tmp_path_factory.mktemp("client-progress"),
                            env={"LOCALAI_GRPC_AUTH_TOKEN": TOKEN},
                            metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert backend.load(tiny_sd).success
    yield backend
    backend.stop()


def _env() -> dict[str, str]:
    return {**os.environ, "LOCALAI_GRPC_AUTH_TOKEN": TOKEN, "PYTHONPATH": str(REPO_ROOT)}


def _client(addr: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "diffusers_backend.serving.client", "--addr", addr, *args]


def test_the_bar_on_a_terminal(server, tmp_path):
    output = tmp_path / "bar.png"
    command = _client(server.addr, "--progress-interval", "0.2", "image", "a red cube", "-o",
                      str(output), "--steps", "4", "--width", "64", "--height", "64")
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the pseudo-terminal
        os.execve(sys.executable, command, _env())
    seen = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "\r\x1b[Kgenerating... " in text  # one line, rewritten in place
    assert "[########################] step 4/4" in text
    assert "\n[" not in text  # no bar on a line of its own
    assert f"image written to {output}" in text


def test_plain_lines_and_the_preview_file_off_a_terminal(server, tmp_path):
    output, preview = tmp_path / "plain.png", tmp_path / "latest-preview.png"
    result = subprocess.run(
        _client(server.addr, "image", "a red cube", "-o", str(output), "--steps", "3",
                "--width", "64", "--height", "64", "--preview", str(preview)),
        env=_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stderr.splitlines() if "] step " in line]
    assert [line.split("] step ")[1].split(",")[0] for line in steps] == ["1/3", "2/3", "3/3"]
    assert "\r" not in result.stderr
    picture = Image.open(preview)
    assert picture.format == "PNG" and picture.width <= 64 and picture.height <= 64
    assert not list(tmp_path.glob("*.part"))


def test_watch_json_follows_another_clients_request(server, tmp_path):
    output = tmp_path / "watched.png"
    watcher = subprocess.Popen(
        _client(server.addr, "watch", "--dst", str(output), "--json"), env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # its stream is open before the request is sent
    made = subprocess.run(
        _client(server.addr, "-q", "image", "a red cube", "-o", str(output), "--steps", "2",
                "--width", "64", "--height", "64"),
        env=_env(), capture_output=True, text=True, timeout=240)
    assert made.returncode == 0, made.stderr
    out, err = watcher.communicate(timeout=60)  # a --dst watch ends with its request
    assert watcher.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["stage"] for e in events] == ["queued", "started", "step", "step", "done"]
    assert [e["step"] for e in events if e["stage"] == "step"] == [1, 2]
    assert {e["dst"] for e in events} == {str(output)}
