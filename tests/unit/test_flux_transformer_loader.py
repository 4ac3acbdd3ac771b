"""LocalAI's ``FluxTransformer2DModel`` pipeline_type: its special loader
(``loading/special.load_flux_transformer``) called directly on tiny real weights, in this
process: qfloat8 in bf16 by default like LocalAI, a transformer folder or a whole Flux folder
with a chosen quantization and dtype, and the combinations that cannot run refused by name.
The same load over gRPC is in tests/e2e/test_pipeline_types.py.
"""

from __future__ import annotations

import pytest
from tiny_image_models import tiny_flux_path, tiny_flux_transformer_file

from diffusers_backend.errors import LoadError
from diffusers_backend.loading import special
from diffusers_backend.loading.model_ref import ModelRef, RefKind
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings


def _flux_transformer(ref: ModelRef, **spec_fields):
    import torch

    spec = LoadSpec(model=ref.location, **spec_fields)
    return special.load_flux_transformer(None, ref, {"torch_dtype": torch.float32}, spec,
                                         Settings(bfl_repo=str(tiny_flux_path())))


def _qtypes(module) -> set[str]:
    from optimum.quanto import QModuleMixin

    return {str(m.weight_qtype) for m in module.modules() if isinstance(m, QModuleMixin)}


def test_flux_transformer_defaults_to_qfloat8_in_bf16_like_localai():
    import torch

    pipe = _flux_transformer(ModelRef(RefKind.SINGLE_FILE, str(tiny_flux_transformer_file())),
                             f16=True)
    assert type(pipe).__name__ == "FluxPipeline"
    assert pipe.transformer.dtype == torch.bfloat16
    for component in (pipe.transformer, pipe.text_encoder_2):
        assert _qtypes(component) == {"quanto.qfloat8_e4m3fn"}, type(component).__name__
    assert not _qtypes(pipe.vae)


@pytest.mark.slow  # a whole pipeline or model runs (left out of make test-fast)
def test_flux_transformer_from_folders_with_chosen_quantization_and_dtype(tmp_path):
    """A transformer folder and a whole Flux folder both work; Quantization and torch_dtype
    override LocalAI's defaults (none keeps full weights)."""
    import torch
    from diffusers import FluxTransformer2DModel

    alone = tmp_path / "transformer-only"
    FluxTransformer2DModel.from_pretrained(tiny_flux_path(), subfolder="transformer") \
        .save_pretrained(alone)
    pipe = _flux_transformer(ModelRef(RefKind.FOLDER, str(alone)), quantization="int4",
                             options={"torch_dtype": "fp32"})
    assert _qtypes(pipe.transformer) == {"quanto.qint4"}
    assert pipe.transformer.dtype == torch.float32
    pipe = _flux_transformer(ModelRef(RefKind.FOLDER, str(tiny_flux_path())),
                             quantization="none", options={"torch_dtype": "fp32"})
    assert not _qtypes(pipe.transformer) and not _qtypes(pipe.text_encoder_2)
    image = pipe(prompt="a cat", height=32, width=32, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(1), output_type="np").images[0]
    assert image.shape == (32, 32, 3) and image.std() > 0


def test_flux_int8_with_bf16_is_refused_on_cpu_instead_of_crashing():
    """optimum-quanto 0.2.7 segfaults on CPU running qint8 weights in bfloat16 (measured:
    the process dies), so the load fails first, saying what works."""
    ref = ModelRef(RefKind.SINGLE_FILE, str(tiny_flux_transformer_file()))
    with pytest.raises(LoadError, match="int8 quantization with bfloat16 crashes"):
        _flux_transformer(ref, quantization="int8")


def test_flux_transformer_refuses_an_unknown_quantization_by_name():
    ref = ModelRef(RefKind.SINGLE_FILE, str(tiny_flux_transformer_file()))
    with pytest.raises(LoadError, match="unknown quantization 'fp3'"):
        _flux_transformer(ref, quantization="fp3")
