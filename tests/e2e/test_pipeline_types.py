"""Every ``pipeline_type`` LocalAI documents or ships in its gallery loads here.

Host fidelity: a model YAML that works on LocalAI's diffusers backend must work on ours. The
names come from LocalAI's docs (``docs/content/features/image-generation.md``, its
pipeline_type table and examples) and gallery (every diffusers ``pipeline_type``), plus the
names LocalAI's backend.py handles itself. Each family that can be built tiny offline is
loaded over gRPC on a real server with the YAML's pipeline_type and fields, then runs one
tiny generation. Every name's class and special loader is checked in process in
tests/unit/test_pipeline_type_resolution.py, FluxTransformer2DModel's loader in
tests/unit/test_flux_transformer_loader.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from features_support import free, load_ok, write_image
from harness import backend_pb2, start_backend
from PIL import Image
from tiny_image_models import (
    tiny_chroma_path,
    tiny_flux_path,
    tiny_flux_transformer_file,
    tiny_sana_path,
    tiny_sd3_path,
    tiny_z_image_path,
)
from tiny_models import tiny_depth2img_path, tiny_sd_path, tiny_sd_upscale_path, tiny_sdxl_path
from tiny_video_models import (
    LTX2_TINY_OPTIONS,
    tiny_ltx2_image_to_video_path,
    tiny_svd_path,
    tiny_text_to_video_path,
)
from video_read import read_video


@dataclass(frozen=True)
class Case:
    """One pipeline_type as a LocalAI YAML uses it, and what it must load and do here."""

    pipeline_type: str
    model: Callable[[], Path]
    loads_as: str  # the class named in LoadModel's reply
    run: str  # image | img2img | video | image-to-video | upscale
    fields: dict = field(default_factory=dict)  # the YAML's other ModelOptions

    def __str__(self) -> str:
        return self.pipeline_type


# The gallery's ltx-2 entry as it is (torch_dtype:bf16): diffusers 0.42.1 re-encodes the
# conditioning image as H.264 (image_crf), which needs PyAV, a requirement for this reason.
LTX2_OPTIONS = ["torch_dtype:bf16", *LTX2_TINY_OPTIONS]

E2E_CASES = [
    # LocalAI's docs
    Case("StableDiffusionPipeline", tiny_sd_path, "StableDiffusionPipeline", "image",
         {"F16Memory": False, "SchedulerType": "k_dpmpp_sde", "CLIPSkip": 1}),
    Case("StableDiffusionImg2ImgPipeline", tiny_sd_path, "StableDiffusionImg2ImgPipeline",
         "img2img"),
    Case("StableDiffusionDepth2ImgPipeline", tiny_depth2img_path,
         "StableDiffusionDepth2ImgPipeline", "img2img", {"CFGScale": 6}),
    Case("DiffusionPipeline", tiny_sd_path, "StableDiffusionPipeline", "image"),
    Case("StableDiffusionXLPipeline", tiny_sdxl_path, "StableDiffusionXLPipeline", "image"),
    Case("StableVideoDiffusionPipeline", tiny_svd_path, "StableVideoDiffusionPipeline",
         "image-to-video"),
    Case("AutoPipelineForText2Image", tiny_sd_path, "StableDiffusionPipeline", "image"),
    Case("VideoDiffusionPipeline", tiny_text_to_video_path, "TextToVideoSDPipeline", "video"),
    Case("StableDiffusion3Pipeline", tiny_sd3_path, "StableDiffusion3Pipeline", "image"),
    Case("FluxPipeline", tiny_flux_path, "FluxPipeline", "image",  # gallery flux.yaml
         {"F16Memory": True, "LowVRAM": True, "CFGScale": 1}),
    Case("FluxTransformer2DModel", tiny_flux_transformer_file, "FluxPipeline", "image"),
    Case("SanaPipeline", tiny_sana_path, "SanaPipeline", "image"),
    # LocalAI's gallery
    Case("ZImagePipeline", tiny_z_image_path, "ZImagePipeline", "image",
         {"Options": ["torch_dtype:bf16"], "CFGScale": 3}),
    Case("LTX2ImageToVideoPipeline", tiny_ltx2_image_to_video_path, "LTX2ImageToVideoPipeline",
         "image-to-video", {"LowVRAM": True, "Options": LTX2_OPTIONS}),
    Case("StableDiffusionUpscalePipeline", tiny_sd_upscale_path,
         "StableDiffusionUpscalePipeline", "upscale", {"F16Memory": True}),
    Case("ChromaPipeline", tiny_chroma_path, "ChromaPipeline", "image",
         {"Options": ["torch_dtype:bf16"], "CFGScale": 3}),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module; BFL_REPO is the tiny Flux folder, as an offline user sets it."""
    proc = start_backend(tmp_path_factory.mktemp("pipeline-types"),
                         env={"BFL_REPO": str(tiny_flux_path())})
    yield proc
    proc.stop()


def _load(server, case: Case):
    """LoadModel as the host sends it: Model as written, ModelFile under ModelPath."""
    path = case.model()
    return load_ok(server, path.name, ModelFile=str(path), ModelPath=str(path.parent),
                   PipelineType=case.pipeline_type, **case.fields)


def _check_video(dst: Path, frames: int) -> None:
    video = read_video(dst).frames
    assert video.shape[0] == frames and video.shape[-1] == 3
    assert video.std() > 0


@pytest.mark.parametrize("case", E2E_CASES, ids=str)
def test_pipeline_type_loads_and_generates(server, case: Case, tmp_path):
    try:
        result = _load(server, case)
        assert f"as {case.loads_as}" in result.message, result.message
        picture = write_image(tmp_path / "in.png", seed=1)
        if case.run in ("image", "img2img"):
            extra = {"src": str(picture)} if case.run == "img2img" else {}
            reply = server.image(tmp_path / "out.png", step=2, seed=3, **extra)
            assert reply.success, reply.message
            with Image.open(tmp_path / "out.png") as image:
                assert image.format == "PNG" and image.size == (64, 64)
                assert any(low < high for low, high in image.convert("RGB").getextrema())
        elif case.run in ("video", "image-to-video"):
            start = str(picture) if case.run == "image-to-video" else ""
            dst = tmp_path / "out.mp4"
            request = backend_pb2.GenerateVideoRequest(
                prompt="a red cube", start_image=start, width=32, height=32, num_frames=5,
                fps=4, step=2, seed=3, dst=str(dst))
            reply = server.stub.GenerateVideo(request, timeout=180)
            assert "frames=5" in reply.message, reply.message
            _check_video(dst, 5)
        else:  # upscale: UpscaleImage runs the loaded upscaler
            small = write_image(tmp_path / "small.png", size=(32, 32), seed=2)
            reply = server.stub.UpscaleImage(backend_pb2.UpscaleImageRequest(
                src=str(small), dst=str(tmp_path / "big.png"), scale=2), timeout=120)
            assert reply.success, reply.message
            with Image.open(tmp_path / "big.png") as image:
                assert image.size == (64, 64)
    finally:
        free(server)


def test_video_diffusion_pipeline_on_an_svd_folder_loads_svd(server, tmp_path):
    """LocalAI loads VideoDiffusionPipeline as the model's own class: an SVD folder gives
    StableVideoDiffusionPipeline, through its special loader (chunked feed-forward)."""
    try:
        result = load_ok(server, tiny_svd_path(), PipelineType="VideoDiffusionPipeline")
        assert "as StableVideoDiffusionPipeline" in result.message
    finally:
        free(server)


def test_flux_transformer_is_quantized_to_qfloat8_on_the_bfl_repo_base(server):
    """LocalAI's FluxTransformer2DModel: qfloat8 by default, everything else from BFL_REPO."""
    try:
        offset = len(server.log())
        _load(server, Case("FluxTransformer2DModel", tiny_flux_transformer_file,
                           "FluxPipeline", "image"))
        log = server.log()[offset:]
        assert "quantized to qfloat8 (optimum-quanto), base " + str(tiny_flux_path()) in log
    finally:
        free(server)
