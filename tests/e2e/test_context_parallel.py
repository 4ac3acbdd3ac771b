"""TensorParallelSize: 2 on the tiny Flux over gRPC, on this CPU: two gloo worker processes
run diffusers' context parallelism (Ulysses); the pictures match one process's, alone and in
a request-level batch; a killed worker fails the request in flight at once with
FAILED_PRECONDITION while Health stays OK; a new LoadModel starts fresh workers; Free
leaves no worker process; workers exit by themselves when the server is SIGKILLed.

The tests share one server and run in order (each parallel LoadModel costs ~20 s here)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import grpc
import psutil
import pytest
from harness import batch_of_each_seed, mean_diff, simultaneously, start_backend
from tiny_image_models import tiny_flux_path
from tiny_models import tiny_sd_path

import backend_pb2

# Ulysses splits attention's work over two processes: the sums are reordered, float32
# rounding only. Mean absolute difference over 0..255 pixel values (measured: 0.0).
TOLERANCE = 0.5
PARALLEL = dict(TensorParallelSize=2, Options=["context_parallel_timeout:20"])
_killed: list[int] = []


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A batch window long enough that two simultaneous requests share one pipeline call.
    backend = start_backend(tmp_path_factory.mktemp("cp"),
                            env={"DIFFUSERS_BATCH_WINDOW_MS": "400"})
    yield backend
    backend.stop()


def _workers(result_message: str) -> list[int]:
    found = re.search(r"worker pids ([\d, ]+)", result_message)
    assert found, result_message
    return [int(pid) for pid in found.group(1).split(",")]


def _gone(pids: list[int], within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                alive.append(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
            except psutil.NoSuchProcess:
                pass
        if not any(alive):
            return True
        time.sleep(0.1)
    return False


def _pair(server, folder, name: str) -> None:
    simultaneously([lambda: server.image(folder / f"{name}-11.png", seed=11, step=3),
                    lambda: server.image(folder / f"{name}-12.png", seed=12, step=3)])


def test_two_workers_match_one_process_and_a_killed_worker_fails_the_request(server,
                                                                             tmp_path):
    single = server.load(tiny_flux_path())
    assert single.success, single.message
    server.image(tmp_path / "one.png", seed=7, step=3)
    _pair(server, tmp_path, "one")

    result = server.load(tiny_flux_path(), **PARALLEL)
    assert result.success, result.message
    assert "2 CPU processes (gloo), context parallel ulysses" in result.message
    pids = _workers(result.message)
    assert len(pids) == 2 and all(psutil.pid_exists(pid) for pid in pids)
    server.image(tmp_path / "two.png", seed=7, step=3)
    assert mean_diff(tmp_path / "one.png", tmp_path / "two.png") < TOLERANCE
    _pair(server, tmp_path, "two")
    assert batch_of_each_seed(server.log())[11] == 2  # one call on the workers for both
    for seed in (11, 12):
        assert mean_diff(tmp_path / f"one-{seed}.png", tmp_path / f"two-{seed}.png") < TOLERANCE
    assert mean_diff(tmp_path / "two-11.png", tmp_path / "two-12.png") > 1  # seeds reach ranks

    outcome: dict[str, object] = {}

    def generate() -> None:
        try:  # enough steps that the kill lands while it runs
            server.image(tmp_path / "never.png", seed=1, step=500, width=192, height=192)
        except grpc.RpcError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=generate)
    thread.start()
    time.sleep(2)
    killed = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    _killed.extend(pids)
    thread.join(60)
    assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, grpc.RpcError), outcome
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error
    assert "worker rank 1" in error.details() and "LoadModel" in error.details()
    assert time.monotonic() - killed < 10
    assert not (tmp_path / "never.png").exists()
    assert _gone(pids), "the surviving worker was not stopped"
    assert server.stub.Health(backend_pb2.HealthMessage(), timeout=5).message == b"OK"
    with pytest.raises(grpc.RpcError) as later:
        server.image(tmp_path / "later.png", seed=2)
    assert later.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_a_pipeline_without_a_plan_loads_in_one_process_on_a_cpu_and_says_so(server):
    result = server.load(tiny_sd_path(), TensorParallelSize=2)
    assert result.success, result.message
    assert "on cpu" in result.message and "worker pids" not in result.message
    assert ("StableDiffusionPipeline has no context-parallel plan in diffusers and cpu has no "
            "device map to spread it; loaded in one process") in result.message


def test_loadmodel_starts_fresh_workers_and_free_stops_them(server, tmp_path):
    result = server.load(tiny_flux_path(), **PARALLEL)
    assert result.success, result.message
    pids = _workers(result.message)
    assert set(pids).isdisjoint(_killed)
    server.image(tmp_path / "after.png", seed=7, step=2)
    assert (tmp_path / "after.png").stat().st_size > 0
    assert server.stub.Free(backend_pb2.MemoryUsageData(), timeout=30).success
    assert _gone(pids, within=5), "a worker outlived Free"


def test_workers_exit_when_the_server_is_sigkilled(server):
    result = server.load(tiny_flux_path(), **PARALLEL)
    assert result.success, result.message
    pids = _workers(result.message)
    server.proc.kill()  # SIGKILL: no atexit, no Free; the workers watch their parent
    server.proc.wait(10)
    assert _gone(pids, within=10), "a worker outlived its SIGKILLed server"
