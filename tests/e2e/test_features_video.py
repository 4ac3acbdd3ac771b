"""GenerateVideo end to end: a text-to-video pipeline (TextToVideoSDPipeline from its
model_index, no PipelineType) and Stable Video Diffusion (image to video) write real MP4s."""

from __future__ import annotations

import grpc
import imageio.v3 as iio
import pytest
from features_support import load_ok, rpc_error, write_image
from harness import backend_pb2
from tiny_video_models import tiny_svd_path, tiny_text_to_video_path

pytestmark = pytest.mark.usefixtures("free_backend_after")


def video(server, dst, **fields):
    fields.setdefault("width", 64)
    fields.setdefault("height", 64)
    fields.setdefault("step", 2)
    fields.setdefault("seed", 1)
    request = backend_pb2.GenerateVideoRequest(dst=str(dst), **fields)
    return server.stub.GenerateVideo(request, timeout=180, metadata=server.metadata)


def read_video(path):
    frames = iio.imread(path)
    return frames, iio.immeta(path)


def test_text_to_video_writes_an_mp4(backend, tmp_path):
    result = load_ok(backend, tiny_text_to_video_path())
    assert "TextToVideoSDPipeline" in result.message
    dst = tmp_path / "clip.mp4"
    reply = video(backend, dst, prompt="a cat", num_frames=4, fps=5)
    assert "frames=4" in reply.message and "fps=5" in reply.message
    frames, meta = read_video(dst)
    assert frames.shape == (4, 64, 64, 3)
    assert meta["fps"] == 5
    assert frames.std() > 0


def test_stable_video_diffusion_with_a_start_image(backend, tmp_path):
    load_ok(backend, tiny_svd_path())
    start = write_image(tmp_path / "start.png", seed=2)
    dst = tmp_path / "svd.mp4"
    reply = video(backend, dst, prompt="ignored by SVD", start_image=str(start),
                  num_frames=3, fps=6)
    assert "frames=3" in reply.message
    frames, meta = read_video(dst)
    assert frames.shape == (3, 64, 64, 3)
    assert meta["fps"] == 6


def test_stable_video_diffusion_without_start_image_is_invalid_argument(backend, tmp_path):
    load_ok(backend, tiny_svd_path())
    error = rpc_error(lambda: video(backend, tmp_path / "x.mp4", num_frames=3))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start_image" in error.details()
    assert not (tmp_path / "x.mp4").exists()


def test_video_on_an_image_model_is_invalid_argument(backend, tiny_sd, tmp_path):
    """Not FAILED_PRECONDITION: LocalAI's distributed router reads that as "no model here"
    and reloads or drops the replica. The message says what to load instead."""
    load_ok(backend, tiny_sd)
    error = rpc_error(lambda: video(backend, tmp_path / "x.mp4", num_frames=3))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "makes images, not videos" in error.details()
    assert "load a video pipeline" in error.details()
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("key", ["num_frames", "width", "num_inference_steps"])
def test_params_cannot_bypass_validated_fields(backend, tmp_path, key):
    load_ok(backend, tiny_text_to_video_path())
    error = rpc_error(lambda: video(backend, tmp_path / "x.mp4", num_frames=2,
                                    params={key: "100000"}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert key in error.details()
    assert not (tmp_path / "x.mp4").exists()


def test_svd_cfg_scale_steers_the_guidance(backend, tmp_path):
    """SVD has no guidance_scale; cfg_scale becomes its max_guidance_scale."""
    load_ok(backend, tiny_svd_path())
    start = write_image(tmp_path / "start.png", seed=2)
    low, high = tmp_path / "low.mp4", tmp_path / "high.mp4"
    video(backend, low, start_image=str(start), num_frames=2, cfg_scale=1.0, step=2)
    video(backend, high, start_image=str(start), num_frames=2, cfg_scale=9.0, step=2)
    assert abs(read_video(low)[0].astype(float) - read_video(high)[0].astype(float)).mean() > 0
