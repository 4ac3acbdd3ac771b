"""The client's view of ``diffusers.v1.Progress``: a step bar with an ETA while ``image`` or
``video`` runs, the latest preview kept in a file, and the ``watch`` command.

The bar follows the request by its ``dst`` (the file it writes): the Watch stream is opened
and registered (the server sends its headers once it is) before the generation is sent, so
no step is missed. On a terminal one line is rewritten; otherwise a plain line per step.
A server without the Progress service just shows no bar.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import grpc

STOP_WAIT_S = 10.0  # for the stream's threads to see the cancellation
REGISTER_WAIT_S = 5.0  # for the Watch stream's headers before the generation is sent anyway
BAR_WIDTH = 24


def progress_stubs() -> tuple[Any, Any]:
    """The generated Progress stubs (beside backend_pb2, made by ``client._stubs``)."""
    import progress_pb2
    import progress_pb2_grpc

    return progress_pb2, progress_pb2_grpc


def bar_text(step: int, steps: int, eta_s: float) -> str:
    """``[#######.................] step 7/25, ETA 12s``."""
    filled = BAR_WIDTH * step // steps if steps else 0
    eta = f", ETA {eta_s:.0f}s" if eta_s > 0 else ""
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] step {step}/{steps}{eta}"


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` whole: a viewer never reads a half-written preview."""
    temporary = f"{path}.{os.getpid()}.part"
    Path(temporary).write_bytes(data)
    os.replace(temporary, path)


class StepBar:
    """Follows one request's steps over a Watch stream and shows them on ``stream``."""

    def __init__(self, channel: grpc.Channel, metadata: Any, dst: str, stream: TextIO,
                 show: bool = True, preview: str = "",
                 prefix: Callable[[], str] = str) -> None:
        pb, pb_grpc = progress_stubs()
        self.stream, self.show, self.preview, self.prefix = stream, show, preview, prefix
        self.tty = stream.isatty()
        self.step = self.steps = 0
        self.eta_s = 0.0
        self.previews_written = 0
        self._lock = threading.Lock()
        self._call = pb_grpc.ProgressStub(channel).Watch(
            pb.WatchRequest(dst=dst, previews=bool(preview)), metadata=metadata)
        self._thread = threading.Thread(target=self._read, name="progress", daemon=True)
        self._headers: threading.Thread | None = None

    def start(self) -> None:
        """Open the stream and wait (bounded) until the server has registered it."""
        registered = threading.Event()

        def headers() -> None:
            try:
                self._call.initial_metadata()
            except grpc.RpcError:
                pass
            registered.set()

        self._headers = threading.Thread(target=headers, name="progress-headers", daemon=True)
        self._headers.start()
        registered.wait(REGISTER_WAIT_S)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._call:
                self._on_event(event)
        except grpc.RpcError:
            pass  # cancelled when the call is over, or no Progress service: no bar

    def _on_event(self, event: Any) -> None:
        if event.preview_png and self.preview:
            write_atomic(self.preview, event.preview_png)
            self.previews_written += 1
        if event.stage != "step":
            return
        with self._lock:
            self.step, self.steps, self.eta_s = event.step, event.steps, event.eta_s
        if self.show:
            self.draw()

    def text(self) -> str:
        with self._lock:
            return bar_text(self.step, self.steps, self.eta_s) if self.steps else ""

    def draw(self) -> None:
        """The bar now: rewritten in place on a terminal, a line of its own otherwise."""
        text = self.text()
        if not text:
            return
        with self._lock:
            if self.tty:
                self.stream.write(f"\r\x1b[K{self.prefix()}{text}")
            else:
                self.stream.write(f"{self.prefix()}{text}\n")
            self.stream.flush()

    def stop(self) -> None:
        """End the stream and its threads now, while the process still runs: a call object
        finalized at interpreter exit waits for its lock, which a daemon thread frozen at
        exit may hold, and the process never ends (seen under load)."""
        self._call.cancel()
        self._thread.join(STOP_WAIT_S)
        if self._headers is not None:
            self._headers.join(STOP_WAIT_S)
        self._call = None


def event_line(event: Any, as_json: bool) -> str:
    """One line per event for ``watch``: text, or JSON (the preview base64-encoded)."""
    if as_json:
        from google.protobuf.json_format import MessageToDict

        return json.dumps(MessageToDict(event, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True))
    parts = [event.request_id, event.stage, event.dst or "-"]
    if event.stage == "queued":
        parts.append(f"queue position {event.queue_position}")
    elif event.stage == "step":
        parts.append(bar_text(event.step, event.steps, event.eta_s))
    if event.message:
        parts.append(event.message)
    parts.append(f"{event.elapsed_s:.1f}s")
    return "  ".join(parts)


def watch(channel: grpc.Channel, metadata: Any, dst: str, as_json: bool,
          out: TextIO = sys.stdout) -> int:
    """``diffusers-client watch``: print every event, one line each, until interrupted (or,
    with ``--dst``, until that request ends)."""
    pb, pb_grpc = progress_stubs()
    call = pb_grpc.ProgressStub(channel).Watch(pb.WatchRequest(dst=dst), metadata=metadata)
    try:
        for event in call:
            out.write(event_line(event, as_json) + "\n")
            out.flush()
    finally:
        call.cancel()
    return 0
