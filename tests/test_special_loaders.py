"""The special loaders' table and the parts of them that run without the Hub or a GPU.

Flux quantization, Wan and Sana need multi-GB Hub checkpoints to load for real; here their
wiring is exercised on the tiny SD pipeline (the loaders are generic in the pipeline class),
and their refusals are checked directly.
"""

from __future__ import annotations

import importlib.util

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


@pytest.mark.skipif(importlib.util.find_spec("optimum") is not None,
                    reason="optimum-quanto is installed")
def test_flux_quantization_without_quanto_says_what_to_install(tiny_sd):
    from diffusers import FluxPipeline

    spec = LoadSpec(model=str(tiny_sd), quantization="fp8")
    with pytest.raises(LoadError, match="pip install optimum-quanto"):
        special.load_flux(FluxPipeline, ModelRef(RefKind.FOLDER, str(tiny_sd)), {}, spec,
                          Settings())


def test_single_file_refused_for_a_class_without_it(tmp_path):
    from diffusers import AutoPipelineForText2Image

    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(LoadError, match="cannot load a single checkpoint file"):
        special.default_load(AutoPipelineForText2Image,
                             ModelRef(RefKind.SINGLE_FILE, str(checkpoint)), {},
                             LoadSpec(model=str(checkpoint)), Settings())


def test_sana_loader_defaults_to_bf16_unless_a_dtype_is_chosen(tiny_sd):
    """Wiring only: the Sana loader on the tiny SD pipeline (it is generic in the class)."""
    import torch
    from diffusers import StableDiffusionPipeline

    ref = ModelRef(RefKind.FOLDER, str(tiny_sd))
    pipe = special.load_sana(StableDiffusionPipeline, ref, {"torch_dtype": torch.float32},
                             LoadSpec(model=str(tiny_sd)), Settings())
    assert pipe.vae.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    chosen = LoadSpec(model=str(tiny_sd), options={"torch_dtype": "fp32"})
    pipe = special.load_sana(StableDiffusionPipeline, ref, {"torch_dtype": torch.float32},
                             chosen, Settings())
    assert pipe.vae.dtype == torch.float32


def test_svd_loader_chunks_the_unet_feed_forward():
    from diffusers import StableVideoDiffusionPipeline
    from tiny_models import tiny_svd_path

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
