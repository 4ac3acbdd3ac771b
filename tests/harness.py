"""The test suite's harness: the gRPC stubs, a real backend server on loopback
(:func:`start_backend`), and the picture helpers every module compares outputs with.

Test modules and benchmarks import from here; ``conftest.py`` only defines fixtures."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _ensure_stubs() -> None:
    """Generate the gRPC stubs if `make protogen` has not run (e.g. a bare pytest call)."""
    sys.path.insert(0, str(REPO_ROOT))
    from diffusers_backend.serving.protogen import generate

    generate()


_ensure_stubs()

import backend_pb2  # noqa: E402
import backend_pb2_grpc  # noqa: E402

# The default reconnect backoff (1 s, growing) would hide how fast the server really starts.
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20),
                  ("grpc.max_reconnect_backoff_ms", 100)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class BackendProcess:
    """A backend server subprocess and a stub connected to it."""

    proc: subprocess.Popen
    addr: str
    log_path: Path
    channel: grpc.Channel = field(repr=False)
    stub: backend_pb2_grpc.BackendStub = field(repr=False)
    metadata: tuple = ()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def load(self, model: str | Path, **fields) -> backend_pb2.Result:
        options = backend_pb2.ModelOptions(Model=str(model), **fields)
        return self.stub.LoadModel(options, timeout=180, metadata=self.metadata)

    def image(self, dst: str | Path, **fields) -> backend_pb2.Result:
        fields.setdefault("positive_prompt", "a red cube")
        fields.setdefault("width", 64)
        fields.setdefault("height", 64)
        fields.setdefault("step", 2)
        request = backend_pb2.GenerateImageRequest(dst=str(dst), **fields)
        return self.stub.GenerateImage(request, timeout=120, metadata=self.metadata)

    def status(self) -> backend_pb2.StatusResponse:
        return self.stub.Status(backend_pb2.HealthMessage(), timeout=10, metadata=self.metadata)


def start_backend(tmp_dir: Path, env: dict[str, str] | None = None,
                  wait: bool = True, metadata: tuple = ()) -> BackendProcess:
    """Start ``python -m diffusers_backend`` on a free port; wait until Health answers."""
    port = free_port()
    addr = f"127.0.0.1:{port}"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    full_env.update(env or {})
    log_path = tmp_dir / f"backend-{port}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed when the process ends
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffusers_backend", "--addr", addr],
        cwd=REPO_ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT,
    )
    channel = grpc.insecure_channel(addr, options=FAST_RECONNECT)
    backend = BackendProcess(proc, addr, log_path, channel,
                             backend_pb2_grpc.BackendStub(channel), metadata)
    if wait:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"backend exited with {proc.returncode}:\n{backend.log()}")
            try:
                backend.stub.Health(backend_pb2.HealthMessage(), timeout=1, metadata=metadata)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    backend.stop()
                    raise
                time.sleep(0.05)
    return backend


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # the first bytes of every PNG file


def pixels(path: str | Path) -> np.ndarray:
    """An image file as an int16 HxWx3 array (so differences do not wrap)."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def mean_diff(a: str | Path, b: str | Path) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def same(a: str | Path, b: str | Path) -> bool:
    return bool(np.array_equal(pixels(a), pixels(b)))


# -- waiting on the server instead of sleeping -------------------------------------------------

def wait_for_log(server: BackendProcess, text: str, since: int = 0, within: float = 30) -> str:
    """The server's log from offset ``since``, once it holds ``text`` (AssertionError after
    ``within`` seconds, with the log's tail)."""
    deadline = time.monotonic() + within
    while True:
        log = server.log()[since:]
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the server log after {within}s:\n"
                                 f"{log[-2000:]}")
        time.sleep(0.02)


def wait_for_state(server: BackendProcess, state: int, within: float = 30) -> float:
    """Poll Status until the server reports ``state`` (a StatusResponse.State); the seconds
    that took (AssertionError after ``within`` seconds)."""
    started = time.monotonic()
    while True:
        current = server.status().state
        if current == state:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            name = backend_pb2.StatusResponse.State.Name
            raise AssertionError(f"server still {name(current)}, not {name(state)}, "
                                 f"after {within}s")
        time.sleep(0.02)


# -- batches ----------------------------------------------------------------------------------

T = TypeVar("T")
# The one line each generation request gets (serving/logs.py log_request).
_REQUEST_LINE = re.compile(r"GenerateImage OK in \S+ \(.*?\) seed=(-?\d+) size=\S+ "
                           r"steps=\S+ batch=(\d+)")


def batch_of_each_seed(log: str) -> dict[int, int]:
    """{seed: how many requests shared the pipeline call that made it}, from the request
    log lines of successful GenerateImage calls: the server's own word on which requests
    really were batched (seeds must be unique in ``log``)."""
    return {int(seed): int(batch) for seed, batch in _REQUEST_LINE.findall(log)}


def simultaneously(calls: Sequence[Callable[[], T]], timeout: float = 300) -> list[T]:
    """Run ``calls`` on threads released together by a barrier (simultaneous clients); their
    results in order. An exception in a call is raised here."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise errors[0]
    if any(thread.is_alive() for thread in threads):
        raise AssertionError(f"a call still ran after {timeout}s")
    return results
