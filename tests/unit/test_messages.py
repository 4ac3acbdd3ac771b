"""The pieces behind the newcomer's messages, without a server: the Hub reachability probe
(loading/hub.py), the listen check (serving/listen.py) and the client's command line
(options on either side of the command, a video where a picture was asked for).

Real sockets on loopback stand in for the Hub: a closed port refuses, a listening one
answers; ``hub.invalid`` is a name no resolver knows.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from diffusers_backend.loading import hub
from diffusers_backend.serving import client
from diffusers_backend.serving.listen import bind_problem, cannot_listen_message


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


@pytest.fixture(autouse=True)
def hub_allowed(monkeypatch):
    """The Hub allowed (tests run with HF_HUB_OFFLINE=1) and nothing remembered."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                 "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    hub.forget()
    yield
    hub.forget()


# -- the Hub probe -------------------------------------------------------------------------
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


def test_offline_mode_makes_hub_calls_fail_at_once_and_is_undone(monkeypatch, tmp_path):
    """Inside the block huggingface_hub asks only the cache (what HF_HUB_OFFLINE=1 does)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
    before = constants.HF_HUB_OFFLINE
    started = time.monotonic()
    with hub.offline_mode(), pytest.raises(LocalEntryNotFoundError):
        assert constants.is_offline_mode()
        hf_hub_download("nobody/no-such-model", "model_index.json", cache_dir=tmp_path)
    assert time.monotonic() - started < 2  # no request, so no retries
    assert constants.HF_HUB_OFFLINE == before


def test_advice_names_the_fix():
    advice = hub.unreachable_advice("huggingface.co: Name or service not known")
    assert advice.startswith("the Hub cannot be reached (huggingface.co: Name or service")
    assert "models folder" in advice and "HF_HUB_OFFLINE=1" in advice


# -- the listen check ----------------------------------------------------------------------
def test_a_port_in_use_is_named(listening):
    addr = f"127.0.0.1:{listening}"
    assert bind_problem(addr) == "the port is already in use (is another backend still running?)"
    message = cannot_listen_message(addr)
    assert message.startswith(f"cannot listen on {addr}: the port is already in use")
    assert message.endswith("choose another address with --addr HOST:PORT "
                            "(make run ADDR=HOST:PORT)")


def test_a_free_port_has_no_problem(closed_port):
    assert bind_problem(f"127.0.0.1:{closed_port}") is None


@pytest.mark.parametrize("addr,problem", [("50051", "'50051' is not HOST:PORT"),
                                          ("127.0.0.1:http", "'127.0.0.1:http' is not "
                                                             "HOST:PORT")])
def test_a_malformed_address_is_named(addr, problem):
    assert bind_problem(addr) == problem


# -- the client's command line -------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--addr", "h:1", "-q", "--wait", "status"],
                                  ["status", "--addr", "h:1", "-q", "--wait"],
                                  ["-q", "status", "--addr", "h:1", "--wait"]])
def test_connection_options_go_on_either_side(argv):
    args = client.build_parser().parse_args(argv)
    assert (args.command, args.addr, args.quiet, args.wait) == ("status", "h:1", True, True)


def test_defaults_hold_when_no_option_is_given():
    args = client.build_parser().parse_args(["health"])
    assert (args.addr, args.quiet, args.wait, args.timeout) == (
        client.DEFAULT_ADDR, False, False, None)


def test_a_video_written_under_a_picture_name_is_renamed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.png").write_bytes(b"\0\0\0\x18ftypisom")
    reply = client._video_reply(f"video written to {tmp_path / 'cat.png'}; seed=1", "cat.png")
    assert reply.splitlines() == [f"video written to {tmp_path / 'cat.mp4'}; seed=1",
                                  "note: the loaded model makes videos; renamed cat.png to "
                                  "cat.mp4"]
    assert (tmp_path / "cat.mp4").is_file() and not (tmp_path / "cat.png").exists()


def test_a_video_is_not_renamed_over_another_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.png").write_bytes(b"new")
    (tmp_path / "cat.mp4").write_bytes(b"old")
    reply = client._video_reply("video written to x", "cat.png")
    assert "cat.png is an MP4 (not renamed: cat.mp4 exists)" in reply
    assert (tmp_path / "cat.mp4").read_bytes() == b"old"


# -- docs/troubleshooting.md shows what the code says ----------------------------------------
TROUBLESHOOTING = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"


def shown(section: str) -> list[str]:
    """The lines of the first text block under a heading of docs/troubleshooting.md."""
    body = TROUBLESHOOTING.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return body.split("```text\n", 1)[1].split("```", 1)[0].splitlines()


def test_troubleshooting_shows_the_unreachable_hub_message(monkeypatch):
    from diffusers_backend.loading.model_ref import missing_model_message

    monkeypatch.setattr(hub, "unreachable", lambda: "huggingface.co: Name or service not known")
    assert shown("No internet, or the Hub cannot be reached") == [
        missing_model_message("stabilityai/sd-turbo", "", "")]


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


def test_troubleshooting_shows_the_did_you_mean_messages():
    from diffusers import StableDiffusionPipeline

    from diffusers_backend.errors import LoadError
    from diffusers_backend.loading.model_ref import ModelRef, RefKind
    from diffusers_backend.loading.options_table import ignored_option_warning
    from diffusers_backend.loading.pipeline_loader import resolve_class
    from diffusers_backend.loading.spec import LoadSpec

    with pytest.raises(LoadError) as typo:
        resolve_class(LoadSpec(model="m", pipeline_type="img2imgg"),
                      ModelRef(RefKind.HUB, "m"))
    assert shown("Unknown pipeline_type or option") == [
        str(typo.value), ignored_option_warning("guidance_scael", StableDiffusionPipeline)]


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
