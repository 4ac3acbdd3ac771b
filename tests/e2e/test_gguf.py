"""GGUF transformers (quantized Flux/Wan/... files) loaded over gRPC and generating.

The .gguf files are written by tests/tiny_gguf_models.py from the tiny Flux and Wan
pipelines, which also serve as their base repos (``BFL_REPO`` by default for Flux, the
``gguf_base`` option otherwise). Q8_0 is a real GGML block quantization kept quantized in
memory; BF16 and F16 are the float GGUF types. The loader itself, called in process, is
tested in tests/unit/test_gguf_loader.py.
"""

from __future__ import annotations

import pytest
from features_support import free, load_ok, log_since
from harness import backend_pb2
from PIL import Image
from tiny_gguf_models import tiny_flux_gguf, tiny_wan_gguf
from tiny_image_models import tiny_flux_path
from tiny_video_models import tiny_wan_path
from video_read import read_video


@pytest.fixture(scope="module")
def server(flux_base_backend):
    return flux_base_backend


def _image(server, dst):
    result = server.image(dst, step=2, seed=5, width=32, height=32)
    assert result.success, result.message
    with Image.open(dst) as image:
        assert image.format == "PNG" and image.size == (32, 32)
        extrema = image.convert("RGB").getextrema()
    assert any(low < high for low, high in extrema)  # not a blank picture


def test_q8_flux_gguf_takes_its_pipeline_from_bfl_repo(server, tmp_path):
    """pipeline_type FluxPipeline and no gguf_base: the rest of Flux comes from BFL_REPO."""
    file = tiny_flux_gguf("Q8_0")
    try:
        result = load_ok(server, file.name, ModelFile=str(file), ModelPath=str(file.parent),
                         PipelineType="FluxPipeline")
        assert "as FluxPipeline" in result.message
        assert f"GGUF transformer FluxTransformer2DModel (computing in torch.float32), " \
               f"pipeline FluxPipeline from {tiny_flux_path()}" in server.log()
        _image(server, tmp_path / "q8.png")
    finally:
        free(server)


def test_bf16_flux_gguf_with_gguf_base_under_the_models_folder(server, tmp_path):
    """No pipeline_type: gguf_base (relative to ModelPath) names the pipeline class too."""
    file = tiny_flux_gguf("BF16")
    models = tiny_flux_path().parent
    try:
        result = load_ok(server, file.name, ModelFile=str(file), ModelPath=str(models),
                         Options=[f"gguf_base:{tiny_flux_path().name}"])
        assert "as FluxPipeline" in result.message
        _image(server, tmp_path / "bf16.png")
    finally:
        free(server)


def test_flux_transformer_pipeline_type_loads_a_gguf(server, tmp_path):
    """LocalAI's pipeline_type FluxTransformer2DModel with a .gguf ModelFile: GGUF, not
    optimum-quanto (the file is quantized already)."""
    file = tiny_flux_gguf("Q8_0")
    offset = len(server.log())
    try:
        result = load_ok(server, str(file), PipelineType="FluxTransformer2DModel",
                         Options=["torch_dtype:fp32"])
        assert "FluxPipeline" in result.message
        log = log_since(server, offset)
        assert "GGUF transformer FluxTransformer2DModel" in log
        assert "optimum-quanto" not in log and "quantized to" not in log
        _image(server, tmp_path / "component.png")
    finally:
        free(server)


def test_q8_wan_gguf_in_the_original_layout_writes_an_mp4(server, tmp_path):
    """Wan's published GGUF layout (blocks.N.self_attn.q...), converted by diffusers."""
    file = tiny_wan_gguf("Q8_0")
    try:
        result = load_ok(server, str(file), Options=[f"gguf_base:{tiny_wan_path()}",
                                                      "torch_dtype:bf16"])
        assert "as WanPipeline" in result.message
        dst = tmp_path / "wan.mp4"
        request = backend_pb2.GenerateVideoRequest(prompt="a cat", width=32, height=32,
                                                   num_frames=5, fps=4, step=2, seed=1,
                                                   dst=str(dst))
        reply = server.stub.GenerateVideo(request, timeout=180)
        assert "frames=5" in reply.message
        assert read_video(dst).frames.shape == (5, 32, 32, 3)
    finally:
        free(server)


def test_gguf_without_a_base_names_the_option(server):
    file = tiny_wan_gguf("Q8_0")
    result = server.load(str(file))
    assert not result.success
    assert "gguf_base:" in result.message
    free(server)
