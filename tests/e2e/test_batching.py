"""Request-level batching (step-level batching switched off): queued text-to-image requests
share one pipeline call, each still made from its own seed.

Every test here checks, from the server's request log lines, that the batch really formed,
and compares every member with the same request served by a server that never batches."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from harness import batch_of_each_seed, pixels, simultaneously, start_backend

BURST = 12


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory, tiny_sd):
    """A burst of BURST fills the batch limit, so its call starts as soon as all are queued;
    the long window only matters if a busy machine delays one of them. Step-level batching
    (tested in test_engine_serving.py) is off, so this is one pipeline call per batch."""
    server = start_backend(tmp_path_factory.mktemp("batching"),
                           env={"PYTHON_GRPC_MAX_WORKERS": "4", "DIFFUSERS_MAX_BATCH": str(BURST),
                                "DIFFUSERS_BATCH_WINDOW_MS": "2000",
                                "DIFFUSERS_STEP_BATCHING": "0"})
    assert server.load(tiny_sd).success
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unbatched_server(tmp_path_factory, tiny_sd):
    """The reference: batching switched off, so every request is served alone."""
    server = start_backend(tmp_path_factory.mktemp("unbatched"),
                           env={"PYTHON_GRPC_MAX_WORKERS": "4", "DIFFUSERS_MAX_BATCH": "1"})
    assert server.load(tiny_sd).success
    yield server
    server.stop()


def _request(index: int) -> dict:
    return {"seed": 100 + index, "step": 3, "positive_prompt": f"cube number {index}"}


def _burst(server, folder, indexes) -> list:
    return simultaneously([lambda i=i: server.image(folder / f"b{i}.png", **_request(i))
                           for i in indexes])


def _assert_each_equals_its_lone_run(reference, folder, indexes) -> None:
    for i in indexes:
        alone = folder / f"alone{i}.png"
        reference.image(alone, **_request(i))
        diff = np.abs(pixels(folder / f"b{i}.png") - pixels(alone))
        # Floating-point noise only: a batched matrix product may round differently.
        assert diff.max() <= 2, f"request {i} differs by {diff.max()} when batched"


def test_concurrent_requests_are_batched_and_match_their_sequential_runs(
        batching_server, unbatched_server, tmp_path):
    offset = len(batching_server.log())
    assert all(r.success for r in _burst(batching_server, tmp_path, range(BURST)))
    batches = batch_of_each_seed(batching_server.log()[offset:])
    assert {i: batches.get(100 + i) for i in range(BURST)} == {i: BURST for i in range(BURST)}
    _assert_each_equals_its_lone_run(unbatched_server, tmp_path, range(BURST))
    # Each request kept its own seed and prompt: no two outputs are alike.
    images = [pixels(tmp_path / f"b{i}.png") for i in range(BURST)]
    assert all(not np.array_equal(images[0], other) for other in images[1:])


def test_a_bad_request_in_a_burst_fails_alone(batching_server, unbatched_server, tmp_path):
    offset = len(batching_server.log())
    goods = [lambda i=i: batching_server.image(tmp_path / f"b{i}.png", **_request(i))
             for i in range(6)]

    def bad():
        try:
            batching_server.image(tmp_path / "missing" / "x.png", seed=9, step=3)
        except grpc.RpcError as exc:
            return exc
        raise AssertionError("a request into a missing folder succeeded")

    *replies, error = simultaneously([*goods, bad])
    assert all(reply.success for reply in replies)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    batches = batch_of_each_seed(batching_server.log()[offset:])
    assert all(batches.get(100 + i, 0) > 1 for i in range(6)), batches  # they did share
    _assert_each_equals_its_lone_run(unbatched_server, tmp_path, range(6))


def test_batching_can_be_switched_off(unbatched_server, tmp_path):
    offset = len(unbatched_server.log())
    assert all(r.success for r in _burst(unbatched_server, tmp_path, range(6)))
    batches = batch_of_each_seed(unbatched_server.log()[offset:])
    assert batches == {100 + i: 1 for i in range(6)}  # six calls of one
