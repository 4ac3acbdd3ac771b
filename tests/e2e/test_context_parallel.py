"""TensorParallelSize: 2 on the tiny Flux over gRPC, on this CPU: two gloo worker processes
run diffusers' context parallelism (Ulysses); the picture matches one process; a killed
worker fails the request in flight at once with FAILED_PRECONDITION; Free leaves no worker."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import grpc
import psutil
import pytest
from harness import mean_diff, start_backend
from tiny_image_models import tiny_flux_path

# Ulysses reorders the attention's sums across two processes: float32 rounding, not a
# different picture. Mean absolute difference over 0..255 pixel values.
TOLERANCE = 0.5
PARALLEL = dict(TensorParallelSize=2, Options=["context_parallel_timeout:20"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    backend = start_backend(tmp_path_factory.mktemp("cp"))
    yield backend
    backend.stop()


def _workers(result_message: str) -> list[int]:
    found = re.search(r"worker pids ([\d, ]+)", result_message)
    assert found, result_message
    return [int(pid) for pid in found.group(1).split(",")]


def _gone(pids: list[int], within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in pids):
            return True
        time.sleep(0.1)
    return False


def test_two_workers_give_the_single_process_picture_and_free_stops_them(server, tmp_path):
    single = server.load(tiny_flux_path())
    assert single.success, single.message
    server.image(tmp_path / "one.png", seed=7, step=3)

    result = server.load(tiny_flux_path(), **PARALLEL)
    assert result.success, result.message
    assert "2 CPU processes (gloo), context parallel ulysses" in result.message
    pids = _workers(result.message)
    assert len(pids) == 2 and all(psutil.pid_exists(pid) for pid in pids)
    server.image(tmp_path / "two.png", seed=7, step=3)
    assert mean_diff(tmp_path / "one.png", tmp_path / "two.png") < TOLERANCE
    server.image(tmp_path / "other.png", seed=8, step=3)
    assert mean_diff(tmp_path / "two.png", tmp_path / "other.png") > 1  # the seed reached it

    assert server.stub.Free(__import__("backend_pb2").MemoryUsageData(), timeout=30).success
    assert _gone(pids), "a worker outlived Free"


def test_a_killed_worker_fails_the_request_in_flight_and_a_reload_serves(server, tmp_path):
    result = server.load(tiny_flux_path(), **PARALLEL)
    assert result.success, result.message
    pids = _workers(result.message)
    outcome: dict[str, object] = {}

    def generate() -> None:
        started = time.monotonic()
        try:  # enough steps that the kill lands while it runs
            server.image(tmp_path / "never.png", seed=1, step=400, width=128, height=128)
        except grpc.RpcError as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=generate)
    thread.start()
    time.sleep(3)
    killed = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, grpc.RpcError), outcome
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error
    assert "worker rank 1" in error.details() and "LoadModel" in error.details()
    assert time.monotonic() - killed < 10
    assert not (tmp_path / "never.png").exists()
    assert _gone(pids), "the surviving worker was not stopped"
    assert server.stub.Health(__import__("backend_pb2").HealthMessage(), timeout=5).message == b"OK"

    again = server.load(tiny_flux_path(), **PARALLEL)
    assert again.success, again.message
    fresh = _workers(again.message)
    assert set(fresh).isdisjoint(pids)
    server.image(tmp_path / "after.png", seed=7, step=2)
    assert (tmp_path / "after.png").stat().st_size > 0
