"""Logging set-up (text or JSON lines) and the one log line per generation request.

``DIFFUSERS_LOG_FORMAT=json`` turns every log record of the process, ours and the
libraries', into one JSON object per line (time, level, logger, message, plus the request
fields), which log collectors ingest without parsing rules. Python warnings and uncaught
thread exceptions are routed through logging too, so they come out as JSON as well.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import threading
from datetime import datetime, timezone
from typing import Any

from diffusers_backend.engine.timings import RequestTimings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
request_log = logging.getLogger("diffusers_backend.requests")
_json = False  # set by configure_logging


class JsonFormatter(logging.Formatter):
    """One JSON object per record; structured fields from ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single-line JSON object (tracebacks included as text)."""
        stamp = datetime.fromtimestamp(record.created, tz=timezone.utc)
        entry: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Send every log record to stderr as text or JSON lines, at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))
    global _json
    _json = fmt == "json"
    if _json:
        logging.captureWarnings(True)
        threading.excepthook = _log_thread_exception
        # Progress bars are raw terminal text, not log lines; off for log collectors.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def adopt_library_loggers() -> None:
    """With JSON logs, make torch, transformers and diffusers log through our handler.

    Each library installs a stderr handler of its own (plain text) and stops
    propagation; the background import thread calls this right after importing torch, so
    their warnings come out as JSON like every other line. A no-op with text logs.
    """
    if not _json:
        return
    # torch's own logging (torch._logging, set up at import) writes glog-style lines through
    # a handler of its own on the "torch" logger; torchao's import warns through it.
    torch_logger = logging.getLogger("torch")
    for handler in list(torch_logger.handlers):
        torch_logger.removeHandler(handler)
    torch_logger.propagate = True
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        try:
            library = importlib.import_module(name)
            library.disable_default_handler()
            library.enable_propagation()
            library.disable_progress_bar()
        except Exception:  # noqa: BLE001 - a library missing or changed: keep its handler
            logging.getLogger(__name__).debug("cannot adopt %s", name, exc_info=True)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception that escaped a thread, as a log record instead of raw stderr text."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("diffusers_backend").error(
        "uncaught exception in thread %s", name,
        exc_info=args.exc_value)  # its __traceback__ is args.exc_traceback


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def log_request(method: str, code: str, total_s: float, record: RequestTimings) -> None:
    """Log the one line a generation request gets: status, timings split, what it made."""
    fields: dict[str, Any] = {"rpc": method, "code": code, "total_s": round(total_s, 4)}
    fields.update(record.as_fields())
    size = f"{record.width}x{record.height}" if record.width and record.height else "-"
    seed = "-" if record.seed is None else str(record.seed)
    # Step-level batching: how many of its denoising steps the request shared with others.
    shared = "" if record.shared_steps is None else f" shared_steps={record.shared_steps}"
    request_log.info(
        "%s %s in %.3fs (queue %s, prepare %s, pipeline %s, write %s) seed=%s size=%s "
        "steps=%s batch=%s pipeline=%s%s",
        method, code, total_s, _seconds(record.queue_s), _seconds(record.prepare_s),
        _seconds(record.pipeline_s), _seconds(record.write_s), seed, size,
        record.steps or "-", record.batch or "-", record.pipeline or "-", shared,
        extra={"fields": fields},
    )
