"""The ``diffusers.v1.Progress`` service over real gRPC: a live server with a token, the tiny
SD pipeline, watchers as real streams.

Covers: step events 1..N in order ending in ``done``, the ``dst`` filter, previews that decode
as PNGs no larger than the output, a failed and a cancelled request, 100 watchers at once, a
watcher that never reads (generation goes on), auth, and the step-level loop's reports.
"""

from __future__ import annotations

import io
import threading
import time

import grpc
import pytest
from harness import start_backend
from PIL import Image

import backend_pb2
import progress_pb2
import progress_pb2_grpc

TOKEN = "progress-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
ENDS = {"done", "failed", "cancelled"}


class Collector:
    """A Watch stream read on a thread of its own until its request(s) end."""

    def __init__(self, channel, dst: str = "", previews: bool = False, ends: int = 1) -> None:
        stub = progress_pb2_grpc.ProgressStub(channel)
        self.stream = stub.Watch(progress_pb2.WatchRequest(dst=dst, previews=previews),
                                 metadata=AUTH, timeout=300)
        self.events: list = []
        self._ends = ends
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        ended = 0
        try:
            for event in self.stream:
                self.events.append(event)
                if event.stage in ENDS:
                    ended += 1
                    if ended >= self._ends:
                        break
        except grpc.RpcError:
            pass
        finally:
            self.finished.set()
            self.stream.cancel()

    def wait(self, timeout: float = 120) -> list:
        assert self.finished.wait(timeout), f"stream did not end; got {self.stages()}"
        return self.events

    def stages(self) -> list[str]:
        return [e.stage for e in self.events]


def watching(server, **kwargs) -> Collector:
    collector = Collector(server.channel, **kwargs)
    time.sleep(0.3)  # the stream is registered with the hub before the request starts
    return collector


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd):
    backend = start_backend(tmp_path_factory.mktemp("progress"),
                            env={"LOCALAI_GRPC_AUTH_TOKEN": TOKEN,
                                 "DIFFUSERS_STEP_BATCHING": "0"}, metadata=AUTH)
    assert backend.load(tiny_sd).success
    yield backend
    backend.stop()


def test_steps_arrive_one_to_n_in_order_then_done(server, tmp_path):
    dst = str(tmp_path / "steps.png")
    watcher = watching(server, dst=dst)
    server.image(dst, step=6)
    events = watcher.wait()
    assert watcher.stages() == ["queued", "started"] + ["step"] * 6 + ["done"]
    assert [e.step for e in events if e.stage == "step"] == [1, 2, 3, 4, 5, 6]
    assert {e.steps for e in events if e.stage == "step"} == {6}
    assert len({e.request_id for e in events}) == 1
    assert events[0].queue_position >= 1 and events[0].kind == "image"
    assert events[-1].message.startswith(f"image written to {dst}")
    assert events[-2].eta_s == 0 and all(e.elapsed_s >= 0 for e in events)
    assert not any(e.preview_png for e in events)  # not asked for


def test_dst_filter_sees_only_its_request(server, tmp_path):
    mine, other = str(tmp_path / "mine.png"), str(tmp_path / "other.png")
    watcher = watching(server, dst=mine)
    everyone = watching(server, ends=2)
    server.image(other, step=2)
    server.image(mine, step=3)
    assert {e.dst for e in watcher.wait()} == {mine}
    assert [e.step for e in watcher.events if e.stage == "step"] == [1, 2, 3]
    assert {e.dst for e in everyone.wait()} == {mine, other}


def test_previews_decode_and_are_no_larger_than_the_output(server, tmp_path):
    dst = str(tmp_path / "preview.png")
    watcher = watching(server, dst=dst, previews=True)
    server.image(dst, step=3, width=128, height=96)
    previews = [e.preview_png for e in watcher.wait() if e.stage == "step"]
    assert len(previews) == 3 and all(previews)
    for png in previews:
        picture = Image.open(io.BytesIO(png))
        picture.load()
        assert picture.format == "PNG" and picture.mode == "RGB"
        # Latent resolution: the output over the VAE's factor (2 for the tiny VAE, 8 real).
        width, height = picture.size
        assert width < 128 and 128 % width == 0 and 128 // width == 96 // height


def test_a_request_that_fails_after_it_started_ends_failed(server, tmp_path):
    folder = tmp_path / "gone"
    folder.mkdir()
    dst = str(folder / "never.png")
    watcher = watching(server, dst=dst)
    future = server.stub.GenerateImage.future(
        backend_pb2.GenerateImageRequest(dst=dst, positive_prompt="x", width=64, height=64,
                                         step=10), metadata=AUTH, timeout=300)
    wait_for_step(watcher)
    folder.rmdir()  # its output cannot be written: it fails after its steps ran
    with pytest.raises(grpc.RpcError):
        future.result()
    events = watcher.wait()
    assert events[-1].stage == "failed" and events[-1].message
    assert "Traceback" not in events[-1].message
    server.image(str(tmp_path / "after.png"))  # the server goes on serving


def wait_for_step(watcher: Collector) -> None:
    deadline = time.monotonic() + 60
    while not any(e.stage == "step" for e in watcher.events):
        assert time.monotonic() < deadline, watcher.stages()
        time.sleep(0.05)


def test_a_cancelled_request_ends_cancelled(server, tmp_path):
    dst = str(tmp_path / "cancelled.png")
    watcher = watching(server, dst=dst)
    future = server.stub.GenerateImage.future(
        backend_pb2.GenerateImageRequest(dst=dst, positive_prompt="x", width=64, height=64,
                                         step=400), metadata=AUTH, timeout=300)
    wait_for_step(watcher)
    future.cancel()
    events = watcher.wait()
    assert events[-1].stage == "cancelled"
    assert 0 < events[-1].step < 400


def test_a_hundred_watchers_each_see_every_step(server, tmp_path):
    dst = str(tmp_path / "hundred.png")
    watchers = [Collector(server.channel, dst=dst) for _ in range(100)]
    time.sleep(1.0)
    server.image(dst, step=4)
    for watcher in watchers:
        events = watcher.wait()
        assert [e.step for e in events if e.stage == "step"] == [1, 2, 3, 4]
        assert events[-1].stage == "done"


def test_a_watcher_that_never_reads_does_not_hold_generation(server, tmp_path):
    stub = progress_pb2_grpc.ProgressStub(server.channel)
    stalled = stub.Watch(progress_pb2.WatchRequest(previews=True), metadata=AUTH, timeout=300)
    dst = str(tmp_path / "stalled.png")
    reader = watching(server, dst=dst)
    started = time.monotonic()
    for index in range(2):  # previews the stalled stream never takes
        server.image(str(tmp_path / f"fill{index}.png"), step=6, width=128, height=128)
    server.image(dst, step=5)
    assert time.monotonic() - started < 120
    assert [e.step for e in reader.wait() if e.stage == "step"] == [1, 2, 3, 4, 5]
    stalled.cancel()


def test_watch_needs_the_token(server):
    stub = progress_pb2_grpc.ProgressStub(server.channel)
    with pytest.raises(grpc.RpcError) as error:
        next(iter(stub.Watch(progress_pb2.WatchRequest(), timeout=10)))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_step_level_loop_reports_each_member(tmp_path, tiny_sd):
    backend = start_backend(tmp_path, env={"LOCALAI_GRPC_AUTH_TOKEN": TOKEN,
                                           "DIFFUSERS_STEP_BATCHING": "1"}, metadata=AUTH)
    try:
        assert backend.load(tiny_sd).success
        first, second = str(tmp_path / "a.png"), str(tmp_path / "b.png")
        watchers = {dst: watching(backend, dst=dst, previews=True) for dst in (first, second)}
        done = [threading.Thread(target=backend.image, args=(dst,), kwargs={"step": steps})
                for dst, steps in ((first, 5), (second, 3))]
        for thread in done:
            thread.start()
        for thread in done:
            thread.join(120)
        for dst, steps in ((first, 5), (second, 3)):
            events = watchers[dst].wait()
            assert [e.step for e in events if e.stage == "step"] == list(range(1, steps + 1))
            assert events[-1].stage == "done" and {e.dst for e in events} == {dst}
            assert all(e.preview_png for e in events if e.stage == "step")
    finally:
        backend.stop()
