"""The wrapper every RPC goes through (:func:`serving.status.grpc_method`), driven through a
real gRPC server on loopback: a reply passes through, a raised error aborts the call with the
status and message of ``status_for`` (the mapping tested in tests/unit/test_status_mapping.py)
and is logged once, at the level its kind deserves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from harness import backend_pb2, backend_pb2_grpc

from diffusers_backend.errors import Cancelled, FailedPrecondition, InvalidArgument
from diffusers_backend.serving.status import grpc_method, status_for

Code = grpc.StatusCode
# What this machine's allocator really raises when asked for 256 TiB (torch.empty(2**48)).
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
           "memory: you tried to allocate 281474976710656 bytes. Error code 12")


def _no_traceback(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message, message


class RaisingServicer(backend_pb2_grpc.BackendServicer):
    """Health raises what the test sets, through :func:`grpc_method` like every servicer."""

    error: BaseException | None = None

    @grpc_method
    def Health(self, request, context):  # noqa: N802 - the proto's name
        if self.error is not None:
            raise self.error
        return backend_pb2.Reply(message=b"OK")


@pytest.fixture(scope="module")
def raising() -> Iterator[tuple[RaisingServicer, backend_pb2_grpc.BackendStub]]:
    servicer = RaisingServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    backend_pb2_grpc.add_BackendServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield servicer, backend_pb2_grpc.BackendStub(channel)
    channel.close()
    server.stop(grace=None)


def _call(raising, error: BaseException | None, timeout: float = 10) -> Any:
    """Health's reply, or the RpcError it ended with."""
    servicer, stub = raising
    servicer.error = error
    try:
        return stub.Health(backend_pb2.HealthMessage(), timeout=timeout)
    except grpc.RpcError as exc:
        return exc


@pytest.fixture()
def rpc_log(caplog) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="diffusers_backend.rpc")
    return caplog


def _records(caplog, within: float = 5.0) -> list[logging.LogRecord]:
    """The wrapper's log records, once there is one (the server thread logs before it
    answers, but a client whose deadline passed may return first)."""
    deadline = time.monotonic() + within
    while True:
        found = [r for r in caplog.records if r.name == "diffusers_backend.rpc"]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def test_the_wrapper_passes_a_reply_through(raising, rpc_log):
    assert _call(raising, None).message == b"OK"
    assert _records(rpc_log, within=0) == []


@pytest.mark.parametrize("error", [
    InvalidArgument("steps must be 1 to 500, got 0"),
    ValueError("`callback_steps` has to be a positive integer but is 0"),
    FileNotFoundError(2, "No such file or directory", "/x/lora.safetensors"),
    FailedPrecondition("no model is loaded: call LoadModel first"),
], ids=["own", "ValueError", "FileNotFoundError", "FailedPrecondition"])
def test_a_refusal_aborts_with_its_status_and_logs_one_info_line(raising, rpc_log, error):
    reply = _call(raising, error)
    code, message = status_for(error)
    assert (reply.code(), reply.details()) == (code, message)
    [record] = _records(rpc_log)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == f"Health refused ({code.name}): {message}"


@pytest.mark.parametrize("error", [
    AttributeError("'NoneType' object has no attribute 'to'"),
    RuntimeError(CPU_OOM),
], ids=["internal", "out-of-memory"])
def test_a_failure_aborts_with_its_status_and_logs_the_traceback(raising, rpc_log, error):
    reply = _call(raising, error)
    code, message = status_for(error)
    assert (reply.code(), reply.details()) == (code, message)
    _no_traceback(reply.details())
    [record] = _records(rpc_log)
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[1] is error  # the full story, logged
    assert record.getMessage() == f"Health failed: {message}"


def test_a_cancel_with_time_left_is_logged_as_the_client_cancelling(raising, rpc_log):
    reply = _call(raising, Cancelled("request cancelled by the client"), timeout=30)
    assert reply.code() is Code.CANCELLED
    [record] = _records(rpc_log)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == ("Health cancelled (client cancelled), work stopped: "
                                   "request cancelled by the client")


def test_a_cancel_at_the_deadline_is_logged_as_the_deadline_passing(raising, rpc_log):
    """A client deadline within the slack (0.25 s) of running out reads as "deadline passed"."""
    _call(raising, Cancelled("request cancelled by the client"), timeout=0.24)
    [record] = _records(rpc_log)
    assert record.levelno == logging.WARNING
    assert "Health cancelled (deadline passed), work stopped" in record.getMessage()
