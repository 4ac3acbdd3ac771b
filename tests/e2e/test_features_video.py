"""GenerateVideo end to end: a text-to-video pipeline (TextToVideoSDPipeline from its
model_index, no PipelineType) and Stable Video Diffusion (image to video) write real MP4s."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from features_support import load_ok, rpc_error, write_image
from harness import backend_pb2
from tiny_video_models import tiny_svd_path, tiny_text_to_video_path
from video_read import read_video

pytestmark = pytest.mark.usefixtures("free_backend_after")


def video(server, dst, **fields):
    fields.setdefault("width", 64)
    fields.setdefault("height", 64)
    fields.setdefault("step", 2)
    fields.setdefault("seed", 1)
    request = backend_pb2.GenerateVideoRequest(dst=str(dst), **fields)
    return server.stub.GenerateVideo(request, timeout=180, metadata=server.metadata)


def test_text_to_video_writes_an_mp4(backend, tmp_path):
    result = load_ok(backend, tiny_text_to_video_path())
    assert "TextToVideoSDPipeline" in result.message
    dst = tmp_path / "clip.mp4"
    reply = video(backend, dst, prompt="a cat", num_frames=4, fps=5)
    assert "frames=4" in reply.message and "fps=5" in reply.message
    clip = read_video(dst)
    assert clip.frames.shape == (4, 64, 64, 3)
    assert clip.fps == 5
    assert clip.frames.std() > 0


def test_stable_video_diffusion_with_a_start_image(backend, tmp_path):
    load_ok(backend, tiny_svd_path())
    start = write_image(tmp_path / "start.png", seed=2)
    dst = tmp_path / "svd.mp4"
    reply = video(backend, dst, prompt="ignored by SVD", start_image=str(start),
                  num_frames=3, fps=6)
    assert "frames=3" in reply.message
    clip = read_video(dst)
    assert clip.frames.shape == (3, 64, 64, 3)
    assert clip.fps == 6


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


def test_svd_cfg_scale_becomes_its_max_guidance_scale(backend, tmp_path):
    """SVD has no guidance_scale: cfg_scale 9 gives exactly the video that SVD's own
    max_guidance_scale 9 gives, and a clearly different one from cfg_scale 1 (guidance off)."""
    load_ok(backend, tiny_svd_path())
    start = write_image(tmp_path / "start.png", seed=2)
    clips = {}
    for name, fields in (("cfg 9", {"cfg_scale": 9.0}),
                         ("max_guidance_scale 9", {"params": {"max_guidance_scale": "9"}}),
                         ("cfg 1", {"cfg_scale": 1.0})):
        dst = tmp_path / f"{name}.mp4"
        video(backend, dst, start_image=str(start), num_frames=2, step=2, **fields)
        clips[name] = read_video(dst).frames.astype(float)
    assert np.array_equal(clips["cfg 9"], clips["max_guidance_scale 9"])
    # Guidance off moves the pixels by about 15 levels of 255 here; 2 is far above noise.
    assert np.abs(clips["cfg 9"] - clips["cfg 1"]).mean() > 2


@pytest.mark.parametrize(("params", "says"), [
    ({"callback_steps": "0"}, "`callback_steps` has to be a positive integer"),  # ValueError
    ({"guidance_scale": "abc"}, "not supported between instances of 'str'"),  # TypeError
], ids=["ValueError", "TypeError"])
def test_a_library_value_error_reaches_the_client_as_invalid_argument(backend, tmp_path,
                                                                       params, says):
    """diffusers itself rejects these values (its check_inputs, its guidance comparison):
    the client gets INVALID_ARGUMENT with diffusers' first line, never INTERNAL or a
    traceback, and no file."""
    load_ok(backend, tiny_text_to_video_path())
    offset = len(backend.log())
    error = rpc_error(lambda: video(backend, tmp_path / "x.mp4", num_frames=2, params=params))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith("invalid request: ") and says in error.details()
    assert "\n" not in error.details() and "Traceback" not in error.details()
    assert not (tmp_path / "x.mp4").exists()
    assert "Traceback" not in backend.log()[offset:]  # a refusal, not a failure
