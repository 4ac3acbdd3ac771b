"""The GGUF loader (``loading/special.load_gguf``) called directly in this process on tiny
.gguf files (written by tests/tiny_gguf_models.py from the tiny Flux and Wan pipelines):
Q8_0 weights stay quantized and compute in torch_dtype, the file holds the float model's
weights, Wan keeps its VAE in float32, and a missing gguf package says what to install.
Loading and generating over gRPC is in tests/e2e/test_gguf.py.
"""

from __future__ import annotations

import sys

import pytest
from tiny_gguf_models import tiny_flux_gguf, tiny_wan_gguf
from tiny_image_models import tiny_flux_path
from tiny_video_models import tiny_wan_path

from diffusers_backend.errors import LoadError
from diffusers_backend.loading import special
from diffusers_backend.loading.model_ref import ModelRef, RefKind
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings


@pytest.mark.slow  # a whole pipeline or model runs (left out of make test-fast)
@pytest.mark.parametrize("qtype, dtype_name", [("Q8_0", "bfloat16"), ("F16", "float32")])
def test_weights_stay_quantized_and_compute_in_torch_dtype(qtype, dtype_name):
    import gguf
    import torch
    from diffusers import FluxPipeline
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    file = tiny_flux_gguf(qtype)
    dtype = getattr(torch, dtype_name)
    spec = LoadSpec(model=str(file), pipeline_type="FluxPipeline")
    pipe = special.load_gguf(FluxPipeline, ModelRef(RefKind.SINGLE_FILE, str(file)),
                             {"torch_dtype": dtype}, spec, Settings(bfl_repo=str(tiny_flux_path())))
    layers = [m for m in pipe.transformer.modules() if isinstance(m, GGUFLinear)]
    quantized = [m.weight for m in layers if isinstance(m.weight, GGUFParameter)]
    if qtype == "Q8_0":
        assert layers and all(layer.compute_dtype == dtype for layer in layers)
        assert quantized and all(w.quant_type == gguf.GGMLQuantizationType.Q8_0
                                 for w in quantized)
    else:  # F16 tensors load as plain weights, cast to torch_dtype
        assert not quantized
        assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == dtype
    image = pipe(prompt="a cat", height=32, width=32, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(1), output_type="np").images[0]
    assert image.shape == (32, 32, 3) and image.std() > 0


def test_missing_gguf_package_says_what_to_install(monkeypatch):
    from diffusers import FluxPipeline

    file = tiny_flux_gguf("Q8_0")
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(LoadError, match="pip install gguf"):
        special.load_gguf(FluxPipeline, ModelRef(RefKind.SINGLE_FILE, str(file)), {},
                          LoadSpec(model=str(file), pipeline_type="FluxPipeline"),
                          Settings(bfl_repo=str(tiny_flux_path())))


@pytest.mark.slow  # a whole pipeline or model runs (left out of make test-fast)
@pytest.mark.parametrize("qtype, tolerance", [("F16", 0.001), ("Q8_0", 0.02)])
def test_gguf_weights_are_the_same_model(qtype, tolerance):
    """The GGUF transformer computes what the float one does, within its rounding: the
    file really holds these weights (names matched, blocks dequantized correctly)."""
    import torch
    from diffusers import FluxPipeline

    file = tiny_flux_gguf(qtype)
    flux = str(tiny_flux_path())
    pipe = special.load_gguf(FluxPipeline, ModelRef(RefKind.SINGLE_FILE, str(file)),
                             {"torch_dtype": torch.float32},
                             LoadSpec(model=str(file), pipeline_type="FluxPipeline"),
                             Settings(bfl_repo=flux))
    reference = FluxPipeline.from_pretrained(flux)
    images = [p(prompt="a cat", height=32, width=32, num_inference_steps=2,
                generator=torch.Generator().manual_seed(1), output_type="np").images[0]
              for p in (pipe, reference)]
    assert abs(images[0] - images[1]).max() < tolerance


def test_wan_gguf_keeps_the_vae_in_float32():
    """As load_wan does for Wan folders: bf16 transformer, float32 VAE."""
    import torch
    from diffusers import WanPipeline

    file = tiny_wan_gguf("Q8_0")
    spec = LoadSpec(model=str(file), options={"gguf_base": str(tiny_wan_path())})
    pipe = special.load_gguf(WanPipeline, ModelRef(RefKind.SINGLE_FILE, str(file)),
                             {"torch_dtype": torch.bfloat16}, spec, Settings())
    assert pipe.vae.dtype == torch.float32
    assert pipe.text_encoder.dtype == torch.bfloat16
