"""UpscaleImage: the loaded upscaler pipeline when there is one, else Lanczos by ``scale``."""

from __future__ import annotations

import time

import grpc
import pytest
from features_support import free, load_ok, pixels, rpc_error, write_image
from harness import backend_pb2
from tiny_models import tiny_sd_upscale_path

pytestmark = pytest.mark.usefixtures("free_backend_after")


def upscale(server, src, dst, scale=0):
    request = backend_pb2.UpscaleImageRequest(src=str(src), dst=str(dst), scale=scale)
    return server.stub.UpscaleImage(request, timeout=120, metadata=server.metadata)


@pytest.fixture()
def small(tmp_path):
    return write_image(tmp_path / "small.png", size=(32, 24), seed=5)


def test_lanczos_without_a_model(backend, small, tmp_path):
    free(backend)
    reply = upscale(backend, small, tmp_path / "up.png")
    assert "lanczos" in reply.message
    assert pixels(tmp_path / "up.png").shape == (48, 64, 3)
    upscale(backend, small, tmp_path / "up3.png", scale=3)
    assert pixels(tmp_path / "up3.png").shape == (72, 96, 3)


def test_lanczos_with_an_image_model_loaded(backend, tiny_sd, small, tmp_path):
    load_ok(backend, tiny_sd)
    reply = upscale(backend, small, tmp_path / "up.png")
    assert "lanczos" in reply.message
    assert pixels(tmp_path / "up.png").shape == (48, 64, 3)


def test_upscale_pipeline_is_used_when_loaded(backend, tmp_path):
    # 3 steps: the upscaler's own default is 75 (test_parity_round2 checks that one)
    load_ok(backend, tiny_sd_upscale_path(), Options=["num_inference_steps:3"])
    src = write_image(tmp_path / "small.png", size=(32, 32), seed=5)
    reply = upscale(backend, src, tmp_path / "up.png")
    assert "StableDiffusionUpscalePipeline" in reply.message
    out = pixels(tmp_path / "up.png")
    assert out.shape == (64, 64, 3)
    lanczos = src.parent / "lanczos.png"
    free(backend)
    upscale(backend, src, lanczos)
    assert abs(out - pixels(lanczos)).mean() > 5  # the model made it, not a resize


@pytest.mark.parametrize("model", ["none", "upscaler"])
def test_huge_scale_is_refused_at_once(backend, small, tmp_path, model):
    if model == "upscaler":
        load_ok(backend, tiny_sd_upscale_path())
    started = time.monotonic()
    error = rpc_error(lambda: upscale(backend, small, tmp_path / "up.png", scale=1000))
    assert time.monotonic() - started < 0.5
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in error.details()
    assert not (tmp_path / "up.png").exists()
