"""The special loaders, called directly on tiny real pipelines of their families.

Flux (with optimum-quanto quantization, base components from a local ``BFL_REPO``), Wan and
Sana load from the folders built by tests/tiny_image_models.py and tiny_video_models.py;
end-to-end generation over gRPC is in test_special_pipelines.py.
"""

from __future__ import annotations

import sys

import pytest

from diffusers_backend.errors import LoadError
from diffusers_backend.loading import special
from diffusers_backend.loading.model_ref import ModelRef, RefKind
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings


def test_table_routes_families_and_defaults_the_rest():
    assert special.loader_for("FluxPipeline") is special.load_flux
    assert special.loader_for("WanImageToVideoPipeline") is special.load_wan
    assert special.loader_for("SanaPipeline") is special.load_sana
    assert special.loader_for("StableVideoDiffusionPipeline") is special.load_svd
    assert special.loader_for("StableDiffusionXLPipeline") is special.default_load


def test_flux_refuses_an_unknown_quantization_by_name(tiny_sd):
    from diffusers import FluxPipeline

    spec = LoadSpec(model=str(tiny_sd), quantization="fp3")
    with pytest.raises(LoadError, match="unknown quantization 'fp3'"):
        special.load_flux(FluxPipeline, ModelRef(RefKind.FOLDER, str(tiny_sd)), {}, spec,
                          Settings())


def test_flux_quantization_without_quanto_says_what_to_install(monkeypatch, tiny_sd):
    """optimum-quanto is installed here; a None entry in sys.modules makes its import fail
    exactly as it does where the package is missing."""
    from diffusers import FluxPipeline

    monkeypatch.setitem(sys.modules, "optimum", None)
    spec = LoadSpec(model=str(tiny_sd), quantization="fp8")
    with pytest.raises(LoadError, match="pip install optimum-quanto"):
        special.load_flux(FluxPipeline, ModelRef(RefKind.FOLDER, str(tiny_sd)), {}, spec,
                          Settings())


@pytest.mark.slow
@pytest.mark.parametrize("name, qtype", [("int8", "qint8"), ("fp8", "qfloat8")])
def test_flux_quantized_load_quantizes_transformer_and_t5(name, qtype):
    """int4 runs optimum-quanto's C++ extension, which torch builds and loads by starting
    ninja: that case is in tests/e2e/test_quanto_int4.py."""
    import torch
    from diffusers import FluxPipeline
    from optimum.quanto import QModuleMixin
    from tiny_image_models import tiny_flux_path

    flux = str(tiny_flux_path())
    pipe = special.load_flux(FluxPipeline, ModelRef(RefKind.FOLDER, flux),
                             {"torch_dtype": torch.float32},
                             LoadSpec(model=flux, quantization=name), Settings(bfl_repo=flux))
    for component in (pipe.transformer, pipe.text_encoder_2):
        quantized = [m for m in component.modules() if isinstance(m, QModuleMixin)]
        assert quantized, f"{type(component).__name__} was not quantized"
        assert all(qtype in str(m.weight_qtype) for m in quantized)
    assert not any(isinstance(m, QModuleMixin) for m in pipe.vae.modules())
    image = pipe(prompt="a cat", height=32, width=32, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(1), output_type="np").images[0]
    assert image.shape == (32, 32, 3) and image.std() > 0


def test_flux_without_quantization_is_a_plain_load():
    import torch
    from diffusers import FluxPipeline
    from optimum.quanto import QModuleMixin
    from tiny_image_models import tiny_flux_path

    flux = str(tiny_flux_path())
    pipe = special.load_flux(FluxPipeline, ModelRef(RefKind.FOLDER, flux),
                             {"torch_dtype": torch.float32}, LoadSpec(model=flux), Settings())
    assert not any(isinstance(m, QModuleMixin) for m in pipe.transformer.modules())


def test_single_file_refused_for_a_class_without_it(tmp_path):
    from diffusers import AutoPipelineForText2Image

    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(LoadError, match="cannot load a single checkpoint file"):
        special.default_load(AutoPipelineForText2Image,
                             ModelRef(RefKind.SINGLE_FILE, str(checkpoint)), {},
                             LoadSpec(model=str(checkpoint)), Settings())


def test_sana_loader_defaults_to_bf16_unless_a_dtype_is_chosen():
    import torch
    from diffusers import SanaPipeline
    from tiny_image_models import tiny_sana_path

    sana = str(tiny_sana_path())
    ref = ModelRef(RefKind.FOLDER, sana)
    pipe = special.load_sana(SanaPipeline, ref, {"torch_dtype": torch.float32},
                             LoadSpec(model=sana), Settings())
    for component in (pipe.transformer, pipe.vae, pipe.text_encoder):
        assert component.dtype == torch.bfloat16, type(component).__name__
    chosen = LoadSpec(model=sana, options={"torch_dtype": "fp32"})
    pipe = special.load_sana(SanaPipeline, ref, {"torch_dtype": torch.float32}, chosen,
                             Settings())
    for component in (pipe.transformer, pipe.vae, pipe.text_encoder):
        assert component.dtype == torch.float32, type(component).__name__


def test_wan_loader_keeps_the_vae_in_float32():
    import torch
    from diffusers import WanPipeline
    from tiny_video_models import tiny_wan_path

    wan = str(tiny_wan_path())
    pipe = special.load_wan(WanPipeline, ModelRef(RefKind.FOLDER, wan),
                            {"torch_dtype": torch.bfloat16}, LoadSpec(model=wan), Settings())
    assert pipe.vae.dtype == torch.float32
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.text_encoder.dtype == torch.bfloat16


def test_svd_loader_chunks_the_unet_feed_forward():
    from diffusers import StableVideoDiffusionPipeline
    from tiny_video_models import tiny_svd_path

    path = tiny_svd_path()
    pipe = special.load_svd(StableVideoDiffusionPipeline, ModelRef(RefKind.FOLDER, str(path)),
                            {}, LoadSpec(model=str(path)), Settings())
    chunked = [m for m in pipe.unet.modules() if getattr(m, "_chunk_size", None)]
    assert chunked, "forward chunking was not enabled on the UNet"


def test_wan_loader_keeps_single_files_on_the_default_path(tmp_path):
    """A Wan single file has no vae subfolder to load in float32: it takes the default path,
    which refuses classes that cannot load single files with a clear message."""
    from diffusers import AutoPipelineForText2Image

    checkpoint = tmp_path / "wan.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(LoadError, match="single checkpoint file"):
        special.load_wan(AutoPipelineForText2Image, ModelRef(RefKind.SINGLE_FILE,
                                                             str(checkpoint)), {},
                         LoadSpec(model=str(checkpoint)), Settings())
