"""The newcomer's messages where the network or a process is involved, without a backend:
the Hub reachability probe (loading/hub.py) against loopback sockets, the listen check
(serving/listen.py) against a held port, the client (serving/client.py) with no server or a
silent listener, and the messages docs/troubleshooting.md quotes for those cases.

Real sockets on loopback stand in for the Hub: a closed port refuses, a listening one
answers; ``hub.invalid`` is a name no resolver knows. The in-process parts of the same
messages are tested in tests/unit/test_messages.py.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from diffusers_backend.loading import hub
from diffusers_backend.serving import client
from diffusers_backend.serving.listen import bind_problem, cannot_listen_message

TROUBLESHOOTING = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"


def shown(section: str) -> list[str]:
    """The lines of the first text block under a heading of docs/troubleshooting.md."""
    body = TROUBLESHOOTING.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return body.split("```text\n", 1)[1].split("```", 1)[0].splitlines()


@pytest.fixture()
def listening():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture()
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


pytestmark = pytest.mark.usefixtures("hub_allowed")  # tests/conftest.py


def test_a_refused_connection_is_reported_at_once(closed_port):
    started = time.monotonic()
    reason = hub.probe(f"http://127.0.0.1:{closed_port}")
    assert time.monotonic() - started < 2
    assert reason == "127.0.0.1: Connection refused"


def test_an_unknown_host_is_reported_by_name():
    reason = hub.probe("https://hub.invalid")
    assert reason is not None and reason.startswith("hub.invalid: ")


def test_a_listening_hub_is_reachable(listening):
    assert hub.probe(f"http://127.0.0.1:{listening}") is None


def test_the_probe_asks_the_proxy_when_one_is_set(monkeypatch, closed_port, listening):
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed_port}")
    assert hub.probe("https://huggingface.co") == (
        f"proxy 127.0.0.1:{closed_port}: Connection refused")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{listening}")
    assert hub.probe("https://huggingface.co") is None


def test_the_answer_is_remembered_for_the_endpoint(monkeypatch, closed_port, listening):
    asked = []
    real_probe = hub.probe
    monkeypatch.setattr(hub, "probe", lambda url: asked.append(url) or real_probe(url))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    first, second = hub.unreachable(), hub.unreachable()
    assert first == second == "127.0.0.1: Connection refused" and len(asked) == 1
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listening}")
    assert hub.unreachable() is None and len(asked) == 2  # another endpoint: asked again


def test_offline_by_choice_asks_nothing(monkeypatch, closed_port):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(hub, "probe", lambda url: pytest.fail("the Hub was probed"))
    assert hub.unreachable() is None
    assert hub.why_no_hub() == "HF_HUB_OFFLINE is set"


def test_a_port_in_use_is_named(listening):
    addr = f"127.0.0.1:{listening}"
    assert bind_problem(addr) == "the port is already in use (is another backend still running?)"
    message = cannot_listen_message(addr)
    assert message.startswith(f"cannot listen on {addr}: the port is already in use")
    assert message.endswith("choose another address with --addr HOST:PORT "
                            "(make run ADDR=HOST:PORT)")


def test_a_free_port_has_no_problem(closed_port):
    assert bind_problem(f"127.0.0.1:{closed_port}") is None


def test_troubleshooting_shows_the_model_not_found_message(monkeypatch, tmp_path):
    """The Hub that answers is a loopback server that knows no repo."""
    import http.server
    import threading

    from diffusers_backend.loading.model_ref import missing_model_message

    class NoRepos(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's naming
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoRepos)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        message = missing_model_message("sd-turbo", "/models/sd-turbo", "/models")
    finally:
        server.shutdown()
    assert shown("Model not found") == [message]


def test_troubleshooting_shows_the_port_in_use_message(listening):
    addr = f"127.0.0.1:{listening}"
    [line] = shown("Port already in use")
    assert line.replace("127.0.0.1:50051", addr) == (
        f"diffusers backend: {cannot_listen_message(addr)}")


def test_a_python_without_the_packages_is_told_which_to_use():
    """``python -m diffusers_backend.serving.client`` with a Python that lacks grpc (here:
    this one with its site-packages switched off, -S) names the command to use instead."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-S", "-m", "diffusers_backend.serving.client",
                             "health"], cwd=TROUBLESHOOTING.parents[1], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "diffusers-client: No module named 'grpc'. Run it with the project's environment: "
        ".venv/bin/diffusers-client (`make install` creates it)")


def test_nothing_listening_is_called_no_server(closed_port, capsys):
    addr = f"127.0.0.1:{closed_port}"
    assert client.main(["--addr", addr, "-q", "--wait", "--timeout", "1", "health"]) == 14
    assert capsys.readouterr().err == (
        f"error: UNAVAILABLE: no server answered at {addr} within 1 s\n")


def test_a_listener_that_never_answers_is_not_called_no_server(listening, capsys):
    """Something listens (a plain socket that never speaks gRPC): the call's own status."""
    code = client.main(["--addr", f"127.0.0.1:{listening}", "-q", "--timeout", "1", "health"])
    err = capsys.readouterr().err
    assert code in (4, 14) and err.startswith("error: ")  # DEADLINE_EXCEEDED / UNAVAILABLE
    assert "no server answered" not in err


def _quoted(heading: str) -> str:
    """The first ```text block under ``## heading``, whole."""
    section = TROUBLESHOOTING.read_text().split(f"## {heading}\n", 1)[1]
    found = re.search(r"```text\n(.*?)\n```", section, flags=re.S)
    assert found, f"no text block under {heading!r}"
    return found.group(1)


def test_no_server_message_is_the_clients(closed_port, capsys):
    """docs/troubleshooting.md's "No server answered" block is the client's real message
    (without --wait), with the doc's address."""
    addr = f"127.0.0.1:{closed_port}"
    assert client.main(["--addr", addr, "health"]) != 0
    said = capsys.readouterr().err.strip().splitlines()[-1].replace(addr, "127.0.0.1:50051")
    assert said == _quoted("No server answered")
