"""No single request holds the server (issue 26), over gRPC on a real server.

Absurd sizes are refused before they queue (per-side limit, memory estimate against a
configured device memory, time estimate against the client's deadline), and an ordinary
request is served within seconds after each; SIGTERM during a huge request ends the
process within the grace period plus 5 s, leaving no partial file; SIGTERM with nothing
running exits at once; SD3 with a CLIP skip deeper than its CLIP encoders is
INVALID_ARGUMENT. Nothing here computes a huge picture to the end.
"""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
from harness import start_backend, wait_for_state

import backend_pb2

GRACE_S = 2.0
SERVED_WITHIN_S = 10.0
ENV = {"DIFFUSERS_MAX_SIDE_FACTOR": "64",  # tiny SD: native 64, so sides up to 4096
       "DIFFUSERS_DEVICE_MEMORY": str(2**30)}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd):
    server = start_backend(tmp_path_factory.mktemp("bounds"), env=ENV)
    assert server.load(tiny_sd).success
    yield server
    server.stop()


def _refused(server, dst, timeout: float, **fields) -> tuple[grpc.RpcError, float]:
    request = backend_pb2.GenerateImageRequest(dst=str(dst), positive_prompt="x", **fields)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        server.stub.GenerateImage(request, timeout=timeout)
    return err.value, time.monotonic() - started


def _ordinary_is_served(server, dst) -> None:
    started = time.monotonic()
    assert server.image(dst, step=1).success
    assert time.monotonic() - started < SERVED_WITHIN_S


def test_an_absurd_side_is_refused_then_an_ordinary_request_is_served(server, tmp_path):
    error, took = _refused(server, tmp_path / "wide.png", 10, width=10000, height=64, step=1)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DIFFUSERS_MAX_SIDE_FACTOR" in error.details() and took < 2
    _ordinary_is_served(server, tmp_path / "after-wide.png")


def test_4096_square_above_the_device_memory_is_resource_exhausted(server, tmp_path):
    error, took = _refused(server, tmp_path / "huge.png", 5, width=4096, height=4096, step=1)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "DIFFUSERS_DEVICE_MEMORY" in error.details() and took < 2
    _ordinary_is_served(server, tmp_path / "after-huge.png")


def test_a_request_estimated_past_its_deadline_fails_at_once(server, tmp_path):
    error, took = _refused(server, tmp_path / "late.png", 3, width=1024, height=1024, step=20)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "is estimated to take" in error.details() and took < 2
    assert not list(tmp_path.iterdir())
    _ordinary_is_served(server, tmp_path / "after-late.png")


def test_sd3_clip_skip_deeper_than_its_encoders_is_invalid_argument(server, tmp_path):
    from tiny_image_models import tiny_sd3_path

    assert server.load(tiny_sd3_path()).success
    error, _ = _refused(server, tmp_path / "sd3.png", 60, width=64, height=64, step=1,
                        CLIPSkip=2)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("clip_skip 2 is too large for this model: its text encoder has "
                               "2 layers, so clip_skip can be at most 1")
    assert server.image(tmp_path / "sd3-ok.png", step=1, CLIPSkip=1).success


def test_sigterm_during_a_huge_request_ends_the_process(tmp_path, tiny_sd):
    env = {**ENV, "DIFFUSERS_SHUTDOWN_GRACE": f"{GRACE_S}s"}
    server = start_backend(tmp_path, env=env)
    out = tmp_path / "out"
    out.mkdir()
    try:
        assert server.load(tiny_sd).success
        outcome: dict[str, object] = {}

        def run() -> None:  # no deadline: admission lets it run (it would take minutes)
            try:
                server.stub.GenerateImage(backend_pb2.GenerateImageRequest(
                    dst=str(out / "huge.png"), positive_prompt="x", width=1024, height=1024,
                    step=50))
            except grpc.RpcError as exc:
                outcome["code"] = exc.code()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        wait_for_state(server, backend_pb2.StatusResponse.BUSY)
        time.sleep(1.0)  # inside its first step
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=GRACE_S + 5)
        assert time.monotonic() - sent < GRACE_S + 5
        assert server.proc.returncode == 0
        worker.join(10)
        assert outcome.get("code") in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert not list(out.iterdir())  # no picture, no partial file
        assert "finishing running requests (up to 2s)" in server.log()
    finally:
        server.stop()


def test_sigterm_with_nothing_running_exits_at_once(tmp_path):
    server = start_backend(tmp_path, env={"DIFFUSERS_SHUTDOWN_GRACE": "60s"})
    try:
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=10) == 0
        assert time.monotonic() - sent < 5
        assert "finishing running requests (none running)" in server.log()
    finally:
        server.stop()
