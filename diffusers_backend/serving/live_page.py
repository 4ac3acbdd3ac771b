"""The live page on the metrics port: ``/`` shows the queue and the running requests with
their step bars and latest previews; ``/events`` streams the progress hub's events to it as
server-sent events. Plain HTML and JavaScript, no build step.

Behind the metrics port's token: a browser cannot add an ``Authorization`` header to a page
it opens or to an ``EventSource``, so ``/`` and ``/events`` also take it as ``?token=``
(the page passes its own on). Each ``/events`` connection is one hub watcher (with
previews); a stream ends when its browser goes away.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from diffusers_backend.engine.progress import HUB, Hub

PATHS = ("/", "/events")
KEEPALIVE_S = 15.0
POLL_S = 1.0


def query_token(head: bytes) -> str:
    """``token`` from the request line's query, or ''."""
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(parts) < 2:
        return ""
    return parse_qs(urlsplit(parts[1]).query).get("token", [""])[0]


def _sse(event: Any) -> bytes:
    return f"data: {json.dumps(event.as_dict(previews=True))}\n\n".encode()


def event_stream(hub: Hub = HUB) -> Any:
    """The ``/events`` answer: writes SSE until the client goes."""

    async def stream(writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        watcher = hub.watch(previews=True)
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-store\r\nConnection: close\r\n\r\n")
            for current in hub.snapshot():
                writer.write(_sse(current))
            await writer.drain()
            idle = 0.0
            while not writer.is_closing() and not watcher.closed:  # closed: shutting down
                event = await loop.run_in_executor(None, watcher.get, POLL_S)
                if event is None:
                    idle += POLL_S
                    if idle >= KEEPALIVE_S:
                        writer.write(b": keepalive\n\n")
                        await writer.drain()
                        idle = 0.0
                    continue
                idle = 0.0
                writer.write(_sse(event))
                await asyncio.wait_for(writer.drain(), 10.0)
        finally:
            hub.unwatch(watcher)

    return stream


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diffusers backend: live</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; }
table { border-collapse: collapse; } td, th { padding: .3em .8em; text-align: left; }
.bar { width: 200px; height: 10px; background: #ddd; display: inline-block; }
.bar span { display: block; height: 100%; background: #3a7; }
img { image-rendering: pixelated; width: 96px; }
</style></head>
<body>
<h1>Live requests</h1>
<p id="status">connecting...</p>
<table><thead><tr><th>request</th><th>output</th><th>stage</th><th>progress</th>
<th>ETA</th><th>preview</th></tr></thead><tbody id="requests"></tbody></table>
<script>
const rows = new Map();
const body = document.getElementById("requests");
const token = new URLSearchParams(location.search).get("token");
const source = new EventSource("/events" + (token ? "?token=" + encodeURIComponent(token) : ""));
source.onopen = () => { document.getElementById("status").textContent = "live"; };
source.onerror = () => { document.getElementById("status").textContent = "reconnecting..."; };
source.onmessage = (message) => {
  const e = JSON.parse(message.data);
  let row = rows.get(e.request_id);
  if (!row) {
    row = document.createElement("tr");
    row.id = "request-" + e.request_id;
    row.innerHTML = "<td></td><td></td><td class=stage></td>" +
      "<td><span class=bar><span></span></span> <span class=step></span></td>" +
      "<td class=eta></td><td><img alt=''></td>";
    row.cells[0].textContent = e.request_id;
    row.cells[1].textContent = e.dst;
    rows.set(e.request_id, row);
    body.appendChild(row);
  }
  row.querySelector(".stage").textContent = e.stage === "queued" ?
    "queued (#" + e.queue_position + ")" : e.stage;
  if (e.steps) {
    row.querySelector(".step").textContent = e.step + "/" + e.steps;
    row.querySelector(".bar span").style.width = (100 * e.step / e.steps) + "%";
  }
  row.querySelector(".eta").textContent = e.eta_s ? e.eta_s.toFixed(0) + " s" : "";
  if (e.preview_png) {
    row.querySelector("img").src = "data:image/png;base64," + e.preview_png;
  }
  if (["done", "failed", "cancelled"].includes(e.stage)) {
    row.title = e.message;
    setTimeout(() => { row.remove(); rows.delete(e.request_id); }, 30000);
  }
};
</script>
</body></html>
"""


def page_reply() -> bytes:
    return PAGE.encode()
