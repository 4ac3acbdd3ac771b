"""Concurrency on a real server with PYTHON_GRPC_MAX_WORKERS=4 and the tiny SD pipeline.

* Health and Status answer at once while 16 generations are queued (they run on a control
  thread pool of their own, never behind the pipeline lock), and a bad request is refused
  at once too (validation happens before waiting for the pipeline).
* A load test: 16 clients, each with its own channel, send 208 mixed requests (sizes,
  steps, seeds, txt2img and img2img) while another client interleaves Free, LoadModel and
  reloads. The only acceptable failure is FAILED_PRECONDITION in the window with no model
  (retried); every output is a valid PNG of the requested size and equal to the same
  request run alone beforehand, within floating-point noise: queued text-to-image requests
  are batched into one pipeline call, and a batched matrix product may round differently
  from a single one, so a pixel may differ by at most 2 of 255 (in practice 0 or 1).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from harness import (
    FAST_RECONNECT,
    PNG_MAGIC,
    BackendProcess,
    backend_pb2,
    backend_pb2_grpc,
    pixels,
    start_backend,
)
from PIL import Image

CLIENTS = 16
PER_CLIENT = 13  # 16 x 13 = 208 requests


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd) -> BackendProcess:
    # DIFFUSERS_STEP_BATCHING as a user gets it (auto: step-level wherever a loop serves the
    # model): the wall time bound below is the default's; `0` has its own tests.
    proc = start_backend(tmp_path_factory.mktemp("concurrency-server"),
                         env={"PYTHON_GRPC_MAX_WORKERS": "4", "DIFFUSERS_STEP_BATCHING": "auto"})
    assert proc.load(tiny_sd).success
    proc.image(tmp_path_factory.mktemp("warm") / "warm.png", step=1)  # first call warms up
    yield proc
    proc.stop()


def new_stub(server: BackendProcess) -> tuple[grpc.Channel, backend_pb2_grpc.BackendStub]:
    channel = grpc.insecure_channel(server.addr, options=FAST_RECONNECT)
    return channel, backend_pb2_grpc.BackendStub(channel)




def test_health_and_status_answer_fast_while_16_generations_queue(server, tmp_path):
    done: list[str] = []
    errors: list[BaseException] = []

    def generate(i: int) -> None:
        channel, stub = new_stub(server)
        try:
            request = backend_pb2.GenerateImageRequest(
                positive_prompt="queue", width=64, height=64, step=8, seed=i + 1,
                dst=str(tmp_path / f"q{i}.png"))
            stub.GenerateImage(request, timeout=300)
            done.append(str(i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            channel.close()

    threads = [threading.Thread(target=generate, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # let them all arrive and queue behind the pipeline lock
    health_latencies, status_latencies, states = [], [], []
    channel, stub = new_stub(server)
    try:
        for _ in range(10):
            started = time.perf_counter()
            assert stub.Health(backend_pb2.HealthMessage(), timeout=5).message == b"OK"
            health_latencies.append(time.perf_counter() - started)
            started = time.perf_counter()
            states.append(stub.Status(backend_pb2.HealthMessage(), timeout=5).state)
            status_latencies.append(time.perf_counter() - started)
            time.sleep(0.05)
        # A request that fails validation is refused without waiting for the queue.
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            stub.GenerateImage(backend_pb2.GenerateImageRequest(
                positive_prompt="x", width=-64, dst=str(tmp_path / "bad.png")), timeout=30)
        refused_in = time.perf_counter() - started
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        still_running = len(done) < 16
    finally:
        channel.close()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(done) == 16
    assert still_running, "the queue drained before the measurements; make the work longer"
    print(f"\nHealth while 16 queued: max {max(health_latencies) * 1000:.0f} ms, Status max "
          f"{max(status_latencies) * 1000:.0f} ms, bad request refused in "
          f"{refused_in * 1000:.0f} ms")
    assert max(health_latencies) < 0.5, health_latencies
    assert max(status_latencies) < 0.5, status_latencies
    assert refused_in < 0.5
    assert backend_pb2.StatusResponse.BUSY in states
    for i in range(16):
        assert Image.open(tmp_path / f"q{i}.png").size == (64, 64)


@dataclass(frozen=True)
class Spec:
    width: int
    height: int
    steps: int
    seed: int
    img2img: bool

    @property
    def key(self) -> str:
        return f"{self.width}x{self.height}-s{self.steps}-{self.seed}-{int(self.img2img)}"


SIZES = [(64, 64), (64, 48), (32, 32), (48, 64)]
SPECS = [Spec(*SIZES[i % 4], steps=1 + i % 3, seed=100 + i, img2img=bool((i // 4) % 2))
         for i in range(24)]


def _request(spec: Spec, dst: Path, sources: dict[tuple[int, int], Path]):
    src = str(sources[(spec.width, spec.height)]) if spec.img2img else ""
    return backend_pb2.GenerateImageRequest(
        positive_prompt="a small test picture", negative_prompt="blur", width=spec.width,
        height=spec.height, step=spec.steps, seed=spec.seed, src=src, dst=str(dst))


def test_load_208_requests_16_clients_with_free_and_reload(server, tiny_sd, tmp_path):
    rng = np.random.default_rng(1)
    sources = {}
    for w, h in SIZES:
        sources[(w, h)] = tmp_path / f"src-{w}x{h}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(sources[(w, h)])

    # The same requests, one at a time: the reference every parallel output must equal.
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for spec in SPECS:
        server.stub.GenerateImage(_request(spec, ref_dir / f"{spec.key}.png", sources),
                                  timeout=120)
    reference = {spec.key: pixels(ref_dir / f"{spec.key}.png") for spec in SPECS}

    out = tmp_path / "out"
    out.mkdir()
    outcomes: Counter = Counter()
    unexpected: list[str] = []
    written: list[tuple[Spec, Path]] = []
    lock = threading.Lock()
    stop_churn = threading.Event()

    def client(c: int) -> None:
        channel, stub = new_stub(server)
        try:
            for j in range(PER_CLIENT):
                spec = SPECS[(c * 5 + j * 7) % len(SPECS)]
                dst = out / f"c{c:02d}-{j:02d}-{spec.key}.png"
                for _attempt in range(50):
                    try:
                        stub.GenerateImage(_request(spec, dst, sources), timeout=120)
                        with lock:
                            outcomes["ok"] += 1
                            written.append((spec, dst))
                        break
                    except grpc.RpcError as exc:
                        with lock:
                            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                                outcomes["expected FAILED_PRECONDITION (no model)"] += 1
                            else:
                                unexpected.append(f"{exc.code()}: {exc.details()}")
                                break
                        time.sleep(0.1)  # the model is being swapped; try again shortly
                else:
                    unexpected.append(f"{dst.name}: never found a model loaded")
        finally:
            channel.close()

    def churn() -> None:
        """Another client: Free, LoadModel, and reload over a loaded model."""
        channel, stub = new_stub(server)
        try:
            while not stop_churn.wait(0.4):
                assert stub.Free(backend_pb2.HealthMessage(), timeout=120).success
                outcomes["Free"] += 1
                result = stub.LoadModel(backend_pb2.ModelOptions(Model=str(tiny_sd)), timeout=180)
                assert result.success, result.message
                outcomes["LoadModel"] += 1
                if stop_churn.wait(0.4):
                    break
                result = stub.LoadModel(backend_pb2.ModelOptions(Model=str(tiny_sd)), timeout=180)
                assert result.success, result.message
                outcomes["LoadModel over a loaded model"] += 1
        finally:
            channel.close()

    started = time.perf_counter()
    churner = ThreadPoolExecutor(1).submit(churn)
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    stop_churn.set()
    churner.result(timeout=300)
    wall = time.perf_counter() - started

    print(f"\nload test: {CLIENTS * PER_CLIENT} requests from {CLIENTS} clients in {wall:.1f}s; "
          f"{dict(outcomes)}")
    assert not unexpected, unexpected[:5]
    assert outcomes["ok"] == CLIENTS * PER_CLIENT
    assert outcomes["Free"] >= 1 and outcomes["LoadModel"] >= 1
    max_diff = 0
    for spec, dst in written:
        data = dst.read_bytes()
        assert data[:8] == PNG_MAGIC, dst
        image = Image.open(dst)
        assert image.size == (spec.width, spec.height), (dst.name, image.size)
        diff = np.abs(pixels(dst).astype(np.int16) - reference[spec.key].astype(np.int16))
        assert diff.max() <= 2, f"{dst.name} differs by {diff.max()} from its sequential run"
        max_diff = max(max_diff, int(diff.max()))
    print(f"largest pixel difference from the sequential runs: {max_diff}")
    # Nothing else in the output folder: no temp files, nothing half-written.
    assert sorted(p.name for p in out.iterdir()) == sorted(d.name for _s, d in written)
    assert server.status().state == backend_pb2.StatusResponse.READY
    assert wall < 120
