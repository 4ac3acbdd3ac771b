"""Image-to-video start images keep their aspect ratio: the output is the picture's shape at
the requested area (width x height, else the pipeline's default size), in the model's size
multiple, instead of the picture squashed to the requested box."""

from __future__ import annotations

import av
import pytest
from features_support import load_ok, write_image
from harness import backend_pb2
from PIL import Image
from tiny_video_models import LTX2_TINY_OPTIONS, tiny_ltx2_image_to_video_path

from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.tasks.video import _start_image_size, video_size_multiple

pytestmark = pytest.mark.usefixtures("free_backend_after")


def _size(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.width, stream.height


@pytest.mark.parametrize(("picture", "expected"), [((96, 32), (96, 32)), ((30, 90), (32, 96)),
                                                   ((40, 40), (64, 64))])
def test_ltx2_output_follows_the_start_image_aspect(backend, tmp_path, picture, expected):
    load_ok(backend, tiny_ltx2_image_to_video_path(), PipelineType="LTX2ImageToVideoPipeline",
            Options=LTX2_TINY_OPTIONS)
    start = write_image(tmp_path / "start.png", size=picture, seed=1)
    dst = tmp_path / "clip.mp4"
    reply = backend.stub.GenerateVideo(backend_pb2.GenerateVideoRequest(
        prompt="a red cube", start_image=str(start), width=64, height=64, num_frames=5,
        step=2, seed=3, dst=str(dst)), timeout=300)
    assert _size(dst) == expected
    assert ("keeps the start image's aspect ratio" in reply.message) == (expected != (64, 64))


# ------------------------------------------------------------------ the size rule alone


class _Loaded:
    def __init__(self, pipe, options=None):
        self.pipe = pipe
        self.spec = LoadSpec(model="m", options=options or {})


class _LTXLike:
    vae_spatial_compression_ratio = 32
    transformer_spatial_patch_size = 1

    def __call__(self, image=None, height: int = 512, width: int = 768, num_frames: int = 121):
        raise NotImplementedError


class _WanLike:
    vae_scale_factor_spatial = 8

    def __call__(self, image=None, height: int = 480, width: int = 832, num_frames: int = 81):
        raise NotImplementedError


def _sig(pipe):
    from diffusers_backend.registry.signatures import call_signature

    return call_signature(type(pipe))


def test_a_2_to_1_picture_at_512x512_becomes_about_720x352():
    pipe = _LTXLike()
    multiple = video_size_multiple(pipe)
    assert multiple == 32  # LTX-2's VAE compresses 32x; the image rule alone says 8
    width, height, note = _start_image_size(Image.new("RGB", (1024, 512)), 512, 512,
                                            _Loaded(pipe), _sig(pipe), multiple)
    assert (width, height) == (736, 352)
    assert width % 32 == 0 and height % 32 == 0
    assert abs(width * height - 512 * 512) / (512 * 512) < 0.05
    assert "aspect ratio" in note and "512x512" in note


def test_without_a_size_the_pipeline_default_area_is_used():
    pipe = _WanLike()
    width, height, note = _start_image_size(Image.new("RGB", (600, 800)), 0, 0, _Loaded(pipe),
                                            _sig(pipe), 16)
    assert width < height and width % 16 == 0 and height % 16 == 0
    assert abs(width / height - 0.75) < 0.05
    assert abs(width * height - 480 * 832) / (480 * 832) < 0.05
    assert "default 832x480" in note


def test_options_set_the_default_area_and_a_matching_picture_keeps_the_request():
    pipe = _WanLike()
    loaded = _Loaded(pipe, {"width": 640, "height": 320})
    assert _start_image_size(Image.new("RGB", (200, 100)), 0, 0, loaded, _sig(pipe),
                             16)[:2] == (640, 320)
    assert _start_image_size(Image.new("RGB", (100, 100)), 256, 256, loaded, _sig(pipe),
                             16) == (256, 256, "")


# ------------------------------------------------------- Wan image-to-video (in process)


def test_wan_i2v_output_follows_the_start_image_aspect(tmp_path, monkeypatch,
                                                      single_torch_thread):
    """The real WanImageToVideoPipeline class (tiny, Wan 2.2 layout): a 2:1 picture at a
    64x64 request runs at 96x48 (multiples of 16: VAE 8 x patch 2) and the MP4 says so.

    diffusers 0.42.1's Wan I2V cleans prompts with ``ftfy`` unconditionally; where it is not
    installed the module gets a stand-in here (the server needs the real package)."""
    import types

    from diffusers import WanImageToVideoPipeline
    from diffusers.pipelines.wan import pipeline_wan_i2v
    from tiny_video_models import tiny_wan_i2v_path

    from diffusers_backend.loading.pipeline_loader import LoadedPipeline
    from diffusers_backend.settings import Settings
    from diffusers_backend.tasks.jobs import VideoJob
    from diffusers_backend.tasks.video import plan_video

    if not hasattr(pipeline_wan_i2v, "ftfy"):
        monkeypatch.setattr(pipeline_wan_i2v, "ftfy",
                            types.SimpleNamespace(fix_text=lambda text: text), raising=False)
    pipe = WanImageToVideoPipeline.from_pretrained(tiny_wan_i2v_path())
    pipe.set_progress_bar_config(disable=True)
    assert video_size_multiple(pipe) == 16
    loaded = LoadedPipeline(pipe=pipe, spec=LoadSpec(model="tiny-wan-i2v"), device="cpu",
                            dtype_name="float32")
    start = write_image(tmp_path / "start.png", size=(200, 100), seed=1)
    job = VideoJob(prompt="a cat", start_image=str(start), width=64, height=64, num_frames=5,
                   steps=2, seed=3, dst=str(tmp_path / "wan.mp4"))
    plan = plan_video(loaded, job, Settings())
    assert (plan.width, plan.height) == (96, 48)
    assert plan.start.size == (96, 48)  # resized, not squashed into 64x64
    (video,) = plan.run([plan], None, lambda: False)
    reply = plan.write(video)
    assert _size(tmp_path / "wan.mp4") == (96, 48)
    assert "keeps the start image's aspect ratio (200x100)" in reply


def test_wan_i2v_over_grpc(backend, tmp_path):
    """The same through the server (needs ftfy, a requirement since diffusers' Wan I2V cleans
    prompts with it)."""
    pytest.importorskip("ftfy")
    from tiny_video_models import tiny_wan_i2v_path

    result = load_ok(backend, tiny_wan_i2v_path())
    assert "WanImageToVideoPipeline" in result.message
    start = write_image(tmp_path / "start.png", size=(100, 200), seed=1)
    dst = tmp_path / "wan.mp4"
    reply = backend.stub.GenerateVideo(backend_pb2.GenerateVideoRequest(
        prompt="a cat", start_image=str(start), width=64, height=64, num_frames=5, step=2,
        seed=3, dst=str(dst)), timeout=300)
    assert _size(dst) == (48, 96)
    assert "keeps the start image's aspect ratio (100x200)" in reply.message
    assert "fps=16" in reply.message  # Wan's own rate
