"""Flux quantized to int4 with optimum-quanto, loaded by the special loader and generating.

int4 weights are unpacked by quanto's C++ extension, which ``torch.utils.cpp_extension``
builds and loads by starting processes (ninja, and the compiler on the first build), so
this case is not in process: the int8 and fp8 cases are in
tests/unit/test_special_loaders.py.
"""

from __future__ import annotations

import pytest

from diffusers_backend.loading import special
from diffusers_backend.loading.model_ref import ModelRef, RefKind
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings


@pytest.mark.parametrize("name, qtype", [("int4", "qint4")])
def test_flux_quantized_load_quantizes_transformer_and_t5(name, qtype):
    """The int4 case of tests/unit/test_special_loaders.py's test of the same name."""
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
