"""Request log lines (one per generation, timings split) in text and JSON formats, from a
real server. The format setting and the formatter alone are tested in
tests/unit/test_log_format.py."""

from __future__ import annotations

import json
import re
import time

import grpc
import pytest
from harness import start_backend


def wait_for(predicate, server, timeout: float = 10.0):
    """The request line is written just after the reply leaves: poll the log briefly."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate(server.log())
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"log line not found in:\n{server.log()[-3000:]}")


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def json_server(tmp_path_factory, tiny_sd):
    server = start_backend(tmp_path_factory.mktemp("jsonlog"),
                           env={"DIFFUSERS_LOG_FORMAT": "json"})
    assert server.load(tiny_sd).success
    yield server
    server.stop()


def _requests(text: str) -> list[dict]:
    return [e for e in json_lines(text) if e["logger"] == "diffusers_backend.requests"]


def test_json_request_line_has_timings_and_what_it_made(json_server, tmp_path):
    reply = json_server.image(tmp_path / "a.png", seed=42, width=64, height=48, step=3)
    assert "seed=42" in reply.message
    entry = wait_for(lambda text: next(iter(_requests(text)), None), json_server)
    assert entry["level"] == "INFO"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert entry["rpc"] == "GenerateImage" and entry["code"] == "OK"
    assert (entry["seed"], entry["width"], entry["height"]) == (42, 64, 48)
    assert (entry["steps"], entry["batch"]) == (3, 1)
    assert entry["pipeline"] == "StableDiffusionPipeline"
    for key in ("queue_s", "prepare_s", "pipeline_s", "write_s"):
        assert 0 <= entry[key] <= entry["total_s"], key
    assert entry["pipeline_s"] > 0 and entry["write_s"] > 0
    assert entry["message"].startswith("GenerateImage OK in ")
    assert "seed=42 size=64x48 steps=3 batch=1" in entry["message"]


def test_json_failed_request_line_and_every_line_is_json(json_server, tmp_path):
    with pytest.raises(grpc.RpcError) as error:
        json_server.image(tmp_path / "b.png", step=100000)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    entry = wait_for(lambda text: next(
        (e for e in _requests(text) if e["code"] == "INVALID_ARGUMENT"), None), json_server)
    assert entry["rpc"] == "GenerateImage" and entry["steps"] == 100000
    assert "queue_s" not in entry  # refused before it queued
    # Every line the process wrote, start-up and library lines included, is one JSON object.
    entries = json_lines(json_server.log())
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any(e["message"].startswith("serving on") for e in entries)


def test_text_request_line(loaded_backend, tmp_path):
    loaded_backend.image(tmp_path / "c.png", seed=7, width=64, height=64, step=2)
    pattern = re.compile(
        r"INFO diffusers_backend\.requests: GenerateImage OK in \d+\.\d{3}s \(queue \d+\.\d{3}s, "
        r"prepare \d+\.\d{3}s, pipeline \d+\.\d{3}s, write \d+\.\d{3}s\) seed=7 size=64x64 "
        r"steps=2 batch=1 pipeline=StableDiffusionPipeline")
    wait_for(pattern.search, loaded_backend)
    assert "metrics on" not in loaded_backend.log()  # metrics are off by default
