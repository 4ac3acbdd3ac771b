"""Queued text-to-image requests share one pipeline call, each still made from its own seed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from harness import pixels, start_backend


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory, tiny_sd):
    server = start_backend(tmp_path_factory.mktemp("batching"),
                           env={"PYTHON_GRPC_MAX_WORKERS": "4"})
    assert server.load(tiny_sd).success
    yield server
    server.stop()


def _burst(server, folder, count, **fields):
    def one(i):
        return server.image(folder / f"b{i}.png", seed=100 + i, step=3,
                            positive_prompt=f"cube number {i}", **fields)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_concurrent_requests_are_batched_and_match_their_sequential_runs(batching_server,
                                                                         tmp_path):
    log_before = len(batching_server.log())
    results = _burst(batching_server, tmp_path, 12)
    assert all(r.success for r in results)
    assert "batching" in batching_server.log()[log_before:]
    for i in range(12):
        alone = tmp_path / f"alone{i}.png"
        batching_server.image(alone, seed=100 + i, step=3, positive_prompt=f"cube number {i}")
        diff = np.abs(pixels(tmp_path / f"b{i}.png") - pixels(alone))
        # Floating-point noise only: a batched matrix product may round differently.
        assert diff.max() <= 2, f"request {i} differs by {diff.max()} when batched"
    # Each request kept its own seed and prompt: no two outputs are alike.
    images = [pixels(tmp_path / f"b{i}.png") for i in range(12)]
    assert all(not np.array_equal(images[0], other) for other in images[1:])


def test_a_bad_request_in_a_burst_fails_alone(batching_server, tmp_path):
    def good(i):
        return batching_server.image(tmp_path / f"g{i}.png", seed=i + 1, step=3)

    def bad():
        return batching_server.image(tmp_path / "missing" / "x.png", seed=9, step=3)

    with ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(good, i) for i in range(6)]
        failing = pool.submit(bad)
        assert all(f.result().success for f in goods)
        with pytest.raises(grpc.RpcError) as err:
            failing.result()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_batching_can_be_switched_off(tmp_path, tiny_sd):
    server = start_backend(tmp_path, env={"PYTHON_GRPC_MAX_WORKERS": "4",
                                          "DIFFUSERS_MAX_BATCH": "1"})
    try:
        assert server.load(tiny_sd).success
        assert all(r.success for r in _burst(server, tmp_path, 6))
        assert "batching" not in server.log()
    finally:
        server.stop()
