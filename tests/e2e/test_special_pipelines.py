"""Flux (plain and quantized), Wan and Sana end to end over gRPC, on tiny real pipelines.

Each family is found from its folder's model_index.json (no PipelineType), goes through its
special loader, and generates a real PNG or MP4. The quantized Flux load takes its base
components from ``BFL_REPO`` pointed at a local folder, as an offline user would set it.
"""

from __future__ import annotations

import pytest
from features_support import free, inpaint_request, load_ok, pixels, write_image
from harness import backend_pb2
from PIL import Image
from tiny_image_models import tiny_flux_path, tiny_sana_path
from tiny_video_models import tiny_wan_path
from video_read import read_video


@pytest.fixture(scope="module")
def server(flux_base_backend):
    return flux_base_backend


@pytest.fixture(autouse=True)
def _free_after(server):
    yield
    free(server)


def _png(server, dst, **fields):
    result = server.image(dst, step=2, seed=5, **fields)
    assert result.success, result.message
    with Image.open(dst) as image:
        assert image.format == "PNG"
        return image.size, image.convert("RGB").getextrema()


def test_flux_generates_an_image(server, tmp_path):
    result = load_ok(server, tiny_flux_path())
    assert "as FluxPipeline" in result.message
    size, extrema = _png(server, tmp_path / "flux.png")
    assert size == (64, 64)
    assert any(low < high for low, high in extrema)  # not a blank picture


def test_flux_sizes_snap_to_its_packed_latent_multiple(server, tmp_path):
    """Flux packs 2x2 latents: with an 8x VAE sizes must be multiples of 16, not 8."""
    load_ok(server, tiny_flux_path())
    result = server.image(tmp_path / "snap.png", width=72, height=40, step=2, seed=5)
    assert "snapped from 72x40 to 64x32 (a multiple of 16)" in result.message
    with Image.open(tmp_path / "snap.png") as image:
        assert image.size == (64, 32)


def test_flux_img2img_and_inpainting_on_the_loaded_weights(server, tmp_path):
    """Flux's img2img and inpainting variants come from the same weights (from_pipe)."""
    load_ok(server, tiny_flux_path())
    picture = write_image(tmp_path / "picture.png", seed=3)
    result = server.image(tmp_path / "img2img.png", src=str(picture), step=2, seed=5)
    assert "from the input image with FluxImg2ImgPipeline" in result.message
    request, _, inside = inpaint_request(tmp_path, picture)
    result = server.image(tmp_path / "inpaint.png", src=str(request), step=2, seed=5)
    assert "inpainted with FluxInpaintPipeline" in result.message
    out, original = pixels(tmp_path / "inpaint.png"), pixels(picture)
    assert (out[~inside] == original[~inside]).all()
    assert abs(out[inside] - original[inside]).mean() > 5


def test_flux_quantized_int8_generates_an_image(server, tmp_path):
    offset = len(server.log())
    result = load_ok(server, tiny_flux_path(), Quantization="int8")
    assert "as FluxPipeline" in result.message
    assert "quantized to qint8" in server.log()[offset:]
    size, _ = _png(server, tmp_path / "flux-q.png")
    assert size == (64, 64)


def test_flux_unknown_quantization_fails_the_load_by_name(server):
    result = server.load(tiny_flux_path(), Quantization="fp3")
    assert not result.success
    assert "unknown quantization 'fp3'" in result.message


def test_sana_generates_in_bf16(server, tmp_path):
    result = load_ok(server, tiny_sana_path())
    assert "as SanaPipeline" in result.message and "bfloat16" in result.message
    size, _ = _png(server, tmp_path / "sana.png")
    assert size == (64, 64)


def test_wan_writes_an_mp4(server, tmp_path):
    result = load_ok(server, tiny_wan_path(), Options=["torch_dtype:bf16"])
    assert "as WanPipeline" in result.message and "(bfloat16)" in result.message
    dst = tmp_path / "wan.mp4"
    request = backend_pb2.GenerateVideoRequest(prompt="a cat", width=32, height=32,
                                               num_frames=5, fps=4, step=2, seed=1,
                                               dst=str(dst))
    reply = server.stub.GenerateVideo(request, timeout=180)
    assert "frames=5" in reply.message
    video = read_video(dst)
    assert video.frames.shape == (5, 32, 32, 3)
    assert video.fps == 4
