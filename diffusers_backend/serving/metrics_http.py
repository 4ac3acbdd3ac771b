"""The ``/metrics`` HTTP endpoint: one thread, bounded connections, short timeouts.

A thread-per-connection server (prometheus_client's, wsgiref's) spends a thread and a file
descriptor on every idle socket before it has read a byte, so a few hundred idle
connections exhaust the process. Here one event loop thread holds every connection; a
connection that has not sent its request within ``HEAD_TIMEOUT_S`` is closed, and past
``MAX_CONNECTIONS`` the oldest connection still sending its request is dropped, so a real
scrape always gets in. The exposition itself comes from prometheus_client.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 64
HEAD_TIMEOUT_S = 5.0  # to send the request line and headers
WRITE_TIMEOUT_S = 10.0  # to take the reply
MAX_HEAD_BYTES = 16 * 1024
_REALM = 'Bearer realm="diffusers-backend"'


def _reply(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
           extra: tuple[tuple[str, str], ...] = (), head_only: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close",
             *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, path and (lower-cased) headers of an HTTP/1.x request head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError("not an HTTP request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return parts[0].upper(), urlsplit(parts[1]).path or "/", headers


class MetricsHttpServer:
    """Serves a registry at ``/metrics`` (and ``/``) from a daemon thread's event loop."""

    def __init__(self, registry: CollectorRegistry, token: str, sock: socket.socket,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self._registry = registry
        self._expected = f"Bearer {token}".encode() if token else None
        self._sock = sock
        self._max = max_connections
        # Connections still sending their request, oldest first (the ones to drop).
        self._waiting: OrderedDict[asyncio.Task[Any], None] = OrderedDict()
        self._open = 0
        # Collecting runs collectors that may take a lock: never on the loop itself.
        self._collect = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-collect")
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, name="metrics-http", daemon=True).start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, sock=self._sock, limit=MAX_HEAD_BYTES))
        self._loop.run_forever()

    def _make_room(self) -> bool:
        """Drop the oldest connection still sending its request; False when none is."""
        if not self._waiting:
            return False
        oldest, _ = self._waiting.popitem(last=False)
        oldest.cancel()
        return True

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a connection handler always runs inside its task
        if self._open >= self._max and not self._make_room():
            writer.close()
            return
        self._open += 1
        self._waiting[task] = None
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            except asyncio.LimitOverrunError:
                writer.write(_reply("431 Request Header Fields Too Large", b"headers too large\n"))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
                return
            finally:
                self._waiting.pop(task, None)
            reply = await self._answer(head)
            if callable(reply):  # the live page's event stream: until the client goes
                await reply(writer)
                return
            writer.write(reply)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._open -= 1
            writer.close()

    async def _answer(self, head: bytes) -> Any:
        from diffusers_backend.serving import live_page

        try:
            method, path, headers = _parse_head(head)
        except ValueError:
            return _reply("400 Bad Request", b"not an HTTP request\n")
        if self._expected is not None:
            given = headers.get("authorization", "").encode("latin-1", "replace")
            if path in live_page.PATHS and not given:  # a browser: the token in the URL
                given = f"Bearer {live_page.query_token(head)}".encode("latin-1", "replace")
            if not hmac.compare_digest(given, self._expected):
                return _reply("401 Unauthorized", b"missing or invalid authorization bearer "
                              b"token\n", extra=(("WWW-Authenticate", _REALM),))
        if path not in ("/", "/metrics", "/events"):
            return _reply("404 Not Found", b"metrics are served at /metrics\n")
        if method not in ("GET", "HEAD"):
            return _reply("405 Method Not Allowed", b"use GET\n", extra=(("Allow", "GET, HEAD"),))
        if path == "/events" and method == "GET":
            return live_page.event_stream()
        if path == "/" and "text/html" in headers.get("accept", ""):  # a browser: the page
            return _reply("200 OK", live_page.page_reply(), "text/html; charset=utf-8",
                          head_only=method == "HEAD")
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(self._collect, encoder, self._registry)
        return _reply("200 OK", body, content_type, head_only=method == "HEAD")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (raises OSError when it cannot be bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
