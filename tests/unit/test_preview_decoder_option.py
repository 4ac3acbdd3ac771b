"""``preview_decoder:<folder>`` (loading/preview_decoder.py) in process: a wrong folder fails
the load saying why, and a real tiny ``AutoencoderTiny`` decodes previews no larger than
the output (engine/previews.py)."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from tiny_models import tiny_autoencoder_path

from diffusers_backend.engine.previews import preview_png
from diffusers_backend.errors import LoadError
from diffusers_backend.loading.preview_decoder import load_preview_decoder
from diffusers_backend.loading.spec import LoadSpec


def spec(models: str, named: str) -> LoadSpec:
    return LoadSpec(model="some/hub-id", model_path=models, options={"preview_decoder": named})


def test_a_missing_folder_fails_the_load(tmp_path):
    with pytest.raises(LoadError, match="preview_decoder: no AutoencoderTiny folder at taesd"):
        load_preview_decoder(None, spec(str(tmp_path), "taesd"), "cpu", torch.float32, True)


def test_a_folder_of_another_model_fails_the_load(tiny_sd):
    named = str(tiny_sd / "vae")  # an AutoencoderKL: would load as a random AutoencoderTiny
    with pytest.raises(LoadError, match="holds a AutoencoderKL, not an AutoencoderTiny"):
        load_preview_decoder(None, spec(str(tiny_sd), named), "cpu", torch.float32, True)


def test_no_option_loads_nothing(tmp_path):
    blank = LoadSpec(model="some/hub-id", model_path=str(tmp_path))
    assert load_preview_decoder(None, blank, "cpu", torch.float32, True) is None


def test_decoded_previews_are_no_larger_than_the_output():
    folder = tiny_autoencoder_path()
    decoder = load_preview_decoder(None, spec(str(folder.parent), folder.name), "cpu",
                                   torch.float32, True)
    assert type(decoder).__name__ == "AutoencoderTiny" and decoder.dtype == torch.float32
    latents = torch.randn(4, 32, 24)
    for (width, height), size in (((48, 64), (48, 64)), ((24, 32), (24, 32))):
        png = preview_png(None, latents, width, height, decoder)
        assert png is not None
        picture = Image.open(io.BytesIO(png))
        assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == size
