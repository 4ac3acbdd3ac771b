"""The log format pieces that need no server (``serving/logs.py``): DIFFUSERS_LOG_FORMAT's
setting, the JSON formatter keeping a traceback on one line, and the request line written
for a request refused before the worker. Request lines from a real server are tested in
tests/e2e/test_logging.py."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from diffusers_backend.engine.timings import RequestTimings
from diffusers_backend.serving.logs import JsonFormatter, log_request
from diffusers_backend.settings import SettingsError, load_settings


def test_log_format_setting():
    assert load_settings({}).log_format == "text"
    assert load_settings({"DIFFUSERS_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(SettingsError, match="DIFFUSERS_LOG_FORMAT must be text or json"):
        load_settings({"DIFFUSERS_LOG_FORMAT": "xml"})


def test_json_formatter_keeps_tracebacks_on_one_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",),
                                   sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed here" and entry["level"] == "ERROR"
    assert "ValueError: boom" in entry["exception"]


def test_request_line_without_worker_timings(caplog):
    """A request refused before the worker (nothing measured) still logs its line."""
    with caplog.at_level(logging.INFO, logger="diffusers_backend.requests"):
        log_request("UpscaleImage", "NOT_FOUND", 0.0123, RequestTimings())
    (record,) = caplog.records
    assert record.getMessage() == (
        "UpscaleImage NOT_FOUND in 0.012s (queue -, prepare -, pipeline -, write -) "
        "seed=- size=- steps=- batch=- pipeline=-")
    assert record.fields == {"rpc": "UpscaleImage", "code": "NOT_FOUND", "total_s": 0.0123}
