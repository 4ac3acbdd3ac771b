"""Faults on real server processes: cancellation, out of memory, SIGTERM, orphaning.

The out-of-memory test is a real allocation failure on the real request path, not a
simulated one: with DIFFUSERS_MAX_PIXELS raised (an operator setting), a request for a
1048576x1048576 image passes validation and torch's CPU allocator refuses the latents
(about 256 GB) at once with "can't allocate memory". No test hook is involved.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from harness import (
    FAST_RECONNECT,
    PNG_MAGIC,
    REPO_ROOT,
    BackendProcess,
    backend_pb2,
    backend_pb2_grpc,
    free_port,
    start_backend,
    wait_for_state,
)
from PIL import Image

SLOW_STEPS = 400  # 64x64 on the tiny pipeline: roughly 40-100 ms a step on 2 busy cores


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd) -> BackendProcess:
    proc = start_backend(tmp_path_factory.mktemp("faults-server"),
                         env={"DIFFUSERS_MAX_PIXELS": str(2**40),
                              # operator settings that let requests reach the paths tested
                              # here: past admission (its own tests: test_request_bounds.py)
                              "DIFFUSERS_MAX_SIDE_FACTOR": "0",
                              "DIFFUSERS_DEVICE_MEMORY": str(2**62),
                              "DIFFUSERS_DEADLINE_ADMISSION": "0"})
    assert proc.load(tiny_sd).success
    proc.image(tmp_path_factory.mktemp("warm") / "warm.png", step=1)
    yield proc
    proc.stop()


def _slow_request(dst: Path, seed: int = 1) -> backend_pb2.GenerateImageRequest:
    return backend_pb2.GenerateImageRequest(positive_prompt="slow", width=64, height=64,
                                            step=SLOW_STEPS, seed=seed, dst=str(dst))


def _wait_not_busy(server: BackendProcess, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if server.status().state != backend_pb2.StatusResponse.BUSY:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"server still BUSY {within}s after the client went away")


def _wait_for_log(server: BackendProcess, text: str, since: int = 0, within: float = 5) -> str:
    """The server's log from ``since`` once it holds ``text`` (written just after the reply)."""
    deadline = time.monotonic() + within
    while True:
        log = server.log()[since:]
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def _assert_serves(server: BackendProcess, dst: Path) -> None:
    assert server.stub.Health(backend_pb2.HealthMessage(), timeout=5).message == b"OK"
    assert server.image(dst, step=1, seed=9).success
    assert dst.read_bytes()[:8] == PNG_MAGIC


def test_deadline_stops_the_generation_within_a_step(server, tmp_path):
    dst = tmp_path / "existing.png"
    Image.new("RGB", (8, 8), (4, 5, 6)).save(dst)
    before = dst.read_bytes()
    log_before = len(server.log())
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        server.stub.GenerateImage(_slow_request(dst), timeout=1.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    # The server stopped working (a full run is SLOW_STEPS steps, many seconds).
    stopped_after = _wait_not_busy(server, within=3)
    log = _wait_for_log(server, "GenerateImage cancelled (deadline passed)", log_before)
    assert "GenerateImage cancelled (deadline passed)" in log, log[-2000:]
    # between two steps, or inside one (the block checks of engine/block_checks.py)
    assert ("cancelled by the client at step" in log
            or "cancelled by the client (stopped inside a step)" in log)
    assert dst.read_bytes() == before, "a cancelled request must not touch an existing dst"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.png"]
    _assert_serves(server, tmp_path / "next.png")
    print(f"\ndeadline: server idle {stopped_after:.2f}s after the client's deadline")


def test_client_cancel_stops_the_generation(server, tmp_path):
    dst = tmp_path / "cancelled.png"
    future = server.stub.GenerateImage.future(_slow_request(dst, seed=2), timeout=120)
    wait_for_state(server, backend_pb2.StatusResponse.BUSY)  # it is generating
    assert future.cancel()
    _wait_not_busy(server, within=3)
    log = _wait_for_log(server, "GenerateImage cancelled (client cancelled)")
    assert "GenerateImage cancelled (client cancelled)" in log, log[-2000:]
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []
    _assert_serves(server, tmp_path / "after-cancel.png")


def test_out_of_memory_is_resource_exhausted_and_the_next_request_works(server, tmp_path):
    dst = tmp_path / "huge.png"
    side = 2**20  # 1048576 x 1048576: latents alone would need 256 GB
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        server.image(dst, width=side, height=side, step=1, seed=3)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert "out of memory" in err.value.details()
    assert time.monotonic() - started < 30
    assert not dst.exists() and list(tmp_path.iterdir()) == []
    log = server.log()
    assert "can't allocate memory" in log  # the real allocator error, logged in full
    assert "freeing cached memory" in log
    assert server.status().state == backend_pb2.StatusResponse.READY
    _assert_serves(server, tmp_path / "after-oom.png")


def test_sigterm_lets_the_running_request_finish_then_exits_0(tmp_path, tiny_sd):
    server = start_backend(tmp_path, env={"DIFFUSERS_SHUTDOWN_GRACE": "60"})
    try:
        assert server.load(tiny_sd).success
        server.image(tmp_path / "warm.png", step=1)
        # Calibrate a request of about 3 s on this machine.
        started = time.monotonic()
        server.image(tmp_path / "calibrate.png", step=10)
        per_step = (time.monotonic() - started) / 10
        steps = max(10, min(400, int(3.0 / per_step)))
        dst = tmp_path / "during-sigterm.png"
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = server.image(dst, step=steps, seed=11)
            except grpc.RpcError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        wait_for_state(server, backend_pb2.StatusResponse.BUSY)  # it is generating
        server.proc.send_signal(signal.SIGTERM)
        worker.join(timeout=90)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"].success
        assert dst.read_bytes()[:8] == PNG_MAGIC
        assert Image.open(dst).size == (64, 64)
        assert server.proc.wait(timeout=30) == 0
        log = server.log()
        assert "SIGTERM: finishing running requests" in log
        assert "stopped" in log
        # No temporary files left behind.
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    finally:
        server.stop()


def test_sigterm_refuses_new_requests(tmp_path):
    server = start_backend(tmp_path)
    try:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        with pytest.raises(grpc.RpcError) as err:
            server.stub.Health(backend_pb2.HealthMessage(), timeout=2)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        server.stop()


# --------------------------------------------------------------------------- orphaning

_LAUNCHER = """
import subprocess, sys
log = open(sys.argv[2], "wb")
child = subprocess.Popen([sys.executable, "-m", "diffusers_backend", "--addr", sys.argv[1]],
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
print(child.pid, flush=True)
sys.stdin.read()  # the test closes stdin: this "host" then dies without cleaning up
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            state = next(line for line in fh if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return " Z " not in state and "zombie" not in state


def _orphan(tmp_path: Path, env: dict[str, str]) -> tuple[int, str, Path]:
    """Start the backend from an intermediate process, wait for Health, then kill the host."""
    addr = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "orphan.log"
    host = subprocess.Popen([sys.executable, "-c", _LAUNCHER, addr, str(log_path)],
                            cwd=REPO_ROOT, env={**os.environ, **env},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    pid = int(host.stdout.readline())
    with grpc.insecure_channel(addr, options=FAST_RECONNECT) as channel:
        stub = backend_pb2_grpc.BackendStub(channel)
        stub.Health(backend_pb2.HealthMessage(), timeout=30, wait_for_ready=True)
    host.stdin.close()
    assert host.wait(timeout=10) == 0  # the host is gone; the backend was not told
    return pid, addr, log_path


def test_orphaned_backend_exits(tmp_path):
    pid, _addr, log_path = _orphan(tmp_path, {"LOCALAI_BACKEND_PARENT_WATCH_INTERVAL": "500ms"})
    try:
        deadline = time.monotonic() + 5  # a few 500 ms intervals, plus shutdown
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the orphaned backend is still running"
        log = log_path.read_text()
        assert "is gone; shutting down" in log
        assert "orphaned: finishing running requests" in log
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_orphan_watch_disabled_keeps_serving(tmp_path):
    pid, addr, _log = _orphan(tmp_path, {"LOCALAI_BACKEND_PARENT_WATCH": "off",
                                         "LOCALAI_BACKEND_PARENT_WATCH_INTERVAL": "500ms"})
    try:
        time.sleep(2.5)  # five intervals
        assert _alive(pid)
        with grpc.insecure_channel(addr) as channel:
            reply = backend_pb2_grpc.BackendStub(channel).Health(backend_pb2.HealthMessage(),
                                                                  timeout=5)
        assert reply.message == b"OK"
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not _alive(pid)
