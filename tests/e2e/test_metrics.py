"""Prometheus metrics end to end: a real server with DIFFUSERS_METRICS_ADDR and a token,
real LoadModel/GenerateImage calls (good and bad), the endpoint scraped over HTTP. The
address parsing and the size buckets are tested in tests/unit/test_metrics_settings.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from harness import REPO_ROOT, backend_pb2, free_port, start_backend
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "metrics-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def scrape(url: str, token: str | None = TOKEN) -> str:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of one scrape, parsed by prometheus_client itself."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory):
    port = free_port()
    server = start_backend(
        tmp_path_factory.mktemp("metrics"),
        env={"DIFFUSERS_METRICS_ADDR": f"127.0.0.1:{port}", "LOCALAI_GRPC_AUTH_TOKEN": TOKEN,
             "PYTHON_GRPC_MAX_WORKERS": "4"},
        metadata=AUTH)
    yield server, f"http://127.0.0.1:{port}/metrics"
    server.stop()


def test_counts_after_real_requests(metrics_server, tiny_sd, tmp_path):
    server, url = metrics_server
    before = samples(scrape(url))
    assert value(before, "diffusers_state") == 0  # UNINITIALIZED
    assert value(before, "diffusers_process_rss_bytes") > 10_000_000

    failed = server.load(tmp_path / "no-such-model")
    assert not failed.success
    assert server.load(tiny_sd).success
    for seed in (1, 2):
        server.image(tmp_path / f"ok{seed}.png", seed=seed, width=64, height=64, step=3)
    with pytest.raises(grpc.RpcError) as bad:
        server.image(tmp_path / "bad.png", width=-8)
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as denied:  # no token: refused, and counted
        server.stub.Status(backend_pb2.HealthMessage(), timeout=10)
    assert denied.value.code() is grpc.StatusCode.UNAUTHENTICATED

    after = samples(scrape(url))
    requests = "diffusers_grpc_requests_total"
    rpc = {"service": "backend.Backend"}
    assert value(after, requests, **rpc, method="LoadModel", code="OK") == 2
    assert value(after, requests, **rpc, method="GenerateImage", code="OK") == 2
    assert value(after, requests, **rpc, method="GenerateImage", code="INVALID_ARGUMENT") == 1
    assert value(after, requests, **rpc, method="Status", code="UNAUTHENTICATED") == 1
    assert value(after, requests, **rpc, method="Health", code="OK") >= 1  # start-up poll
    assert value(after, "diffusers_model_loads_total", result="failure") == 1
    assert value(after, "diffusers_model_loads_total", result="success") == 1
    assert value(after, "diffusers_model_load_seconds_count") == 1
    assert value(after, "diffusers_model_load_seconds_sum") > 0

    pipe = "StableDiffusionPipeline"
    assert value(after, "diffusers_images_total", pipeline=pipe) == 2
    assert value(after, "diffusers_denoising_steps_total", pipeline=pipe) == 6  # 2 x 3 steps
    generation = {"pipeline": pipe, "size": "<=256x256"}
    assert value(after, "diffusers_generation_seconds_count", **generation) == 2
    assert value(after, "diffusers_generation_seconds_sum", **generation) > 0
    # The refused request never reached the queue: two waits, two calls of one image each.
    assert value(after, "diffusers_queue_wait_seconds_count") == 2
    assert value(after, "diffusers_batch_size_count") == 2
    assert value(after, "diffusers_batch_size_sum") == 2
    assert value(after, "diffusers_queue_depth") == 0
    assert value(after, "diffusers_grpc_request_duration_seconds_count",
                 method="GenerateImage") == 3
    assert value(after, "diffusers_state") == 2  # READY
    assert value(after, "diffusers_process_rss_bytes") > 10_000_000
    assert value(after, "process_resident_memory_bytes") > 0  # the standard process_* set
    # No GPU here: GPU series appear only once torch.cuda is initialised.
    assert not any(name.startswith("diffusers_gpu_memory") for name, _ in after)


def test_batched_burst_counts_images_per_image_and_batches_per_call(metrics_server, tiny_sd,
                                                                    tmp_path):
    server, url = metrics_server
    assert server.load(tiny_sd).success
    before = samples(scrape(url))

    def one(i):
        return server.image(tmp_path / f"b{i}.png", seed=10 + i, step=2,
                            positive_prompt=f"cube {i}")

    with ThreadPoolExecutor(8) as pool:
        assert all(r.success for r in pool.map(one, range(8)))
    after = samples(scrape(url))

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    pipe = {"pipeline": "StableDiffusionPipeline"}
    assert delta("diffusers_images_total", **pipe) == 8
    assert delta("diffusers_denoising_steps_total", **pipe) == 16
    assert delta("diffusers_batch_size_sum") == 8  # every request in exactly one call
    assert delta("diffusers_batch_size_count") < 8  # ...and some calls served several
    assert delta("diffusers_queue_wait_seconds_count") == 8
    assert delta("diffusers_generation_seconds_count", **pipe, size="<=256x256") == 8
    assert value(after, "diffusers_queue_depth") == 0


def test_endpoint_requires_the_grpc_token(metrics_server):
    _, url = metrics_server
    for token in (None, "wrong"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(url, token=token)
        assert refused.value.code == 401
        assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    with pytest.raises(urllib.error.HTTPError) as missing:
        scrape(url.replace("/metrics", "/nope"))
    assert missing.value.code == 404
    assert "diffusers_grpc_requests_total" in scrape(url)


def test_busy_metrics_port_stops_start_up(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "diffusers_backend", "--addr", f"127.0.0.1:{free_port()}"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "DIFFUSERS_METRICS_ADDR": str(port)})
    assert proc.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port} (DIFFUSERS_METRICS_ADDR)" in proc.stderr
