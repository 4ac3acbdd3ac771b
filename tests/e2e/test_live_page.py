"""The live page on the metrics port, in a real headless browser (Debian's Chromium;
``make test`` installs it when missing): it shows a running request whose step advances.

Chromium, driven over the DevTools protocol (on a pipe), opens the page while one long
request runs; the step the page shows must advance while it stays open, and the request's
latest preview must be on it. Also over plain HTTP: the token (header or ``?token=``)
guards the page and its event stream, and ``/`` still answers Prometheus scrapers with the
metrics.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from harness import free_port, start_backend

TOKEN = "live-page-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
STEPS = 400


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium on PATH: `make test` installs Debian's chromium "
                "(apt-get install chromium) when it is missing")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_sd):
    metrics_port = free_port()
    backend = start_backend(tmp_path_factory.mktemp("live-page"),
                            env={"LOCALAI_GRPC_AUTH_TOKEN": TOKEN,
                                 "DIFFUSERS_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
                                 "DIFFUSERS_STEP_BATCHING": "0"}, metadata=AUTH)
    assert backend.load(tiny_sd).success
    yield backend, f"http://127.0.0.1:{metrics_port}"
    backend.stop()


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4: JSON
    messages ended by NUL), so no WebSocket client is needed."""

    def __init__(self, profile) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def pipes_on_3_and_4() -> None:
            read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.proc = subprocess.Popen(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False,
            preexec_fn=pipes_on_3_and_4)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._ids = iter(range(1, 10**6))
        self._buffer = b""

    def send(self, method: str, session: str = "", **params) -> dict:
        ident = next(self._ids)
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 120
        while True:
            while b"\0" not in self._buffer:
                assert time.monotonic() < deadline, f"no answer to {method}"
                ready, _, _ = select.select([self._from_chrome], [], [], 5)
                if ready:
                    chunk = os.read(self._from_chrome, 1 << 20)
                    assert chunk, "chromium closed its DevTools pipe"
                    self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == ident:
                assert "error" not in reply, reply
                return reply["result"]

    def open(self, url: str) -> str:
        target = self.send("Target.createTarget", url=url)["targetId"]
        return self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def evaluate(self, session: str, expression: str):
        result = self.send("Runtime.evaluate", session, expression=expression,
                           returnByValue=True)
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


STEP_SHOWN = "(document.querySelector('.step') || {}).textContent || ''"


def shown_step(browser: Browser, session: str, above: int = 0, within: float = 120) -> int:
    """The step the page shows for the request, once it is above ``above``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = browser.evaluate(session, STEP_SHOWN)
        if text:
            step, steps = (int(x) for x in text.split("/"))
            assert steps == STEPS
            if step > above:
                return step
        time.sleep(0.5)
    raise AssertionError(f"the page showed no step above {above}: "
                         f"{browser.evaluate(session, 'document.body.innerHTML')}")


def test_the_page_shows_a_running_request_advance(served, tmp_path):
    backend, base = served
    browser = Browser(tmp_path / "profile")
    dst = str(tmp_path / "live.png")
    import backend_pb2

    future = backend.stub.GenerateImage.future(
        backend_pb2.GenerateImageRequest(dst=dst, positive_prompt="a red cube", width=64,
                                         height=64, step=STEPS), metadata=AUTH, timeout=600)
    try:
        session = browser.open(f"{base}/?token={TOKEN}")
        first = shown_step(browser, session)
        second = shown_step(browser, session, above=first)  # the same page, updated live
        assert second > first
        status = browser.evaluate(session, "document.getElementById('status').textContent")
        assert status == "live"
        rows = browser.evaluate(session, "document.getElementById('requests').textContent")
        assert dst in rows
        preview = browser.evaluate(session, "document.querySelector('img').src")
        assert preview.startswith("data:image/png;base64,")  # its latest preview
    finally:
        future.cancel()
        browser.close()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read(2000)
    except urllib.error.HTTPError as error:
        return error.code, "", b""


def test_the_token_guards_the_page_and_its_stream(served):
    _, base = served
    html = {"Accept": "text/html"}
    assert _get(f"{base}/", html)[0] == 401
    assert _get(f"{base}/?token=wrong", html)[0] == 401
    assert _get(f"{base}/events")[0] == 401
    assert _get(f"{base}/metrics?token={TOKEN}")[0] == 401  # the URL token: page only
    status, kind, body = _get(f"{base}/", {**html, "Authorization": f"Bearer {TOKEN}"})
    assert (status, kind) == (200, "text/html; charset=utf-8") and b"EventSource" in body
    status, kind, body = _get(f"{base}/", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and b"diffusers_" in body  # a scraper at / still gets metrics


def test_the_event_stream_sends_events(served, tmp_path):
    backend, base = served
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"GET /events?token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        thread = threading.Thread(target=backend.image, args=(str(tmp_path / "sse.png"),))
        time.sleep(0.5)
        thread.start()
        deadline = time.monotonic() + 120
        while b'"stage": "done"' not in received and time.monotonic() < deadline:
            received += sock.recv(65536)
        thread.join(60)
    assert received.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream")
    assert b'data: {"request_id": ' in received and b'"stage": "step"' in received
