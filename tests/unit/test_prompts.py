"""Prompt weighting (compel) and CLIP skip on real tiny SD 1.x and SDXL pipelines."""

from __future__ import annotations

import logging

import pytest

from diffusers_backend import prompts
from diffusers_backend.errors import InvalidArgument
from diffusers_backend.prompts import (
    build_prompt_kwargs,
    clip_skip_kwargs,
    compel_available,
    compel_prompt_kwargs,
    compel_sd,
    effective_clip_skip,
    warn_if_compel_missing,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def sd(tiny_sd_pipeline):
    return tiny_sd_pipeline


@pytest.fixture(scope="module")
def sdxl():
    """The tiny SDXL pipeline (tiny_models): two 32-wide CLIP encoders, the second with
    projection; SDXL's default force_zeros_for_empty_prompt."""
    from diffusers import StableDiffusionXLPipeline
    from tiny_models import tiny_sdxl_path

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ddpm():
    """A real pipeline with no text at all: no prompt embeddings, no clip_skip."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
    )
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler())


def _generate(pipe, seed: int = 0, **kwargs):
    import torch

    return pipe(
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kwargs,
    ).images


def _same(a, b) -> bool:
    """Equal up to float noise; takes numpy images or torch tensors."""
    import numpy as np

    a, b = (x.detach().cpu().numpy() if hasattr(x, "detach") else x for x in (a, b))
    return a.shape == b.shape and bool(np.allclose(a, b, atol=1e-5))


# ----------------------------------------------------------------------------- compel


def test_compel_is_installed_here():
    assert compel_available()


def test_compel_weighting_changes_the_sd_image(sd):
    plain = build_prompt_kwargs(sd, "a red cube", "", use_compel=True, clip_skip=0)
    weighted = build_prompt_kwargs(sd, "a (red)++ cube", "", use_compel=True, clip_skip=0)
    assert set(weighted) == {"prompt_embeds", "negative_prompt_embeds"}
    assert not _same(_generate(sd, **plain), _generate(sd, **weighted))


def test_unweighted_compel_prompt_matches_diffusers_own_encoding(sd):
    """No weights and no clip skip: compel must not change the picture at all."""
    with_compel = build_prompt_kwargs(sd, "a red cube", "blurry", use_compel=True, clip_skip=0)
    without = build_prompt_kwargs(sd, "a red cube", "blurry", use_compel=False, clip_skip=0)
    assert without == {"prompt": "a red cube", "negative_prompt": "blurry"}
    assert _same(_generate(sd, **with_compel), _generate(sd, **without))


def test_negative_prompt_is_weighted_too(sd):
    a = build_prompt_kwargs(sd, "a cube", "a blue sphere", use_compel=True, clip_skip=0)
    b = build_prompt_kwargs(sd, "a cube", "a (blue)++ sphere", use_compel=True, clip_skip=0)
    assert not _same(a["negative_prompt_embeds"], b["negative_prompt_embeds"])
    assert _same(a["prompt_embeds"], b["prompt_embeds"])


def test_empty_negative_still_gets_an_embedding_of_matching_shape(sd):
    kwargs = build_prompt_kwargs(sd, "a (red)++ cube", "", use_compel=True, clip_skip=0)
    assert kwargs["negative_prompt_embeds"].shape == kwargs["prompt_embeds"].shape
    assert _generate(sd, guidance_scale=7.5, **kwargs).shape == (1, 64, 64, 3)


def test_long_prompt_and_short_negative_are_padded_to_one_length(sd):
    long_prompt = ", ".join(["a (very)+ detailed red cube on a table"] * 6)
    kwargs = build_prompt_kwargs(sd, long_prompt, "blurry", use_compel=True, clip_skip=0)
    positive, negative = kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"]
    assert positive.shape == negative.shape
    assert positive.shape[1] > 77  # not truncated: several 77-token chunks
    assert positive.shape[1] % 77 == 0
    assert _generate(sd, **kwargs).shape == (1, 64, 64, 3)


def test_sdxl_generates_with_compel(sdxl):
    kwargs = build_prompt_kwargs(sdxl, "a (red)++ cube", "blurry", use_compel=True, clip_skip=0)
    assert set(kwargs) == {
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    }
    assert kwargs["prompt_embeds"].shape == (1, 77, 64)
    assert kwargs["pooled_prompt_embeds"].shape == (1, 32)
    weighted = _generate(sdxl, **kwargs)
    assert weighted.shape == (1, 64, 64, 3)
    plain = build_prompt_kwargs(sdxl, "a red cube", "blurry", use_compel=True, clip_skip=0)
    assert not _same(weighted, _generate(sdxl, **plain))


def test_sdxl_unweighted_compel_matches_diffusers(sdxl):
    with_compel = build_prompt_kwargs(sdxl, "a red cube", "blurry", use_compel=True, clip_skip=0)
    without = build_prompt_kwargs(sdxl, "a red cube", "blurry", use_compel=False, clip_skip=0)
    assert _same(_generate(sdxl, **with_compel), _generate(sdxl, **without))


def test_sdxl_pooled_embedding_ignores_weighting_syntax(sdxl):
    weighted = build_prompt_kwargs(sdxl, "a (red)++ cube", "", use_compel=True, clip_skip=0)
    plain = build_prompt_kwargs(sdxl, "a red cube", "", use_compel=True, clip_skip=0)
    assert _same(weighted["pooled_prompt_embeds"], plain["pooled_prompt_embeds"])


def test_sdxl_empty_negative_follows_force_zeros(sdxl):
    kwargs = build_prompt_kwargs(sdxl, "a cube", "", use_compel=True, clip_skip=0)
    assert not kwargs["negative_prompt_embeds"].any()
    assert not kwargs["negative_pooled_prompt_embeds"].any()
    assert kwargs["negative_prompt_embeds"].shape == kwargs["prompt_embeds"].shape
    # Same as diffusers does without compel.
    without = build_prompt_kwargs(sdxl, "a cube", "", use_compel=False, clip_skip=0)
    assert _same(_generate(sdxl, **kwargs), _generate(sdxl, **without))


def test_pipeline_without_clip_embeddings_gets_plain_prompts(ddpm, caplog):
    with caplog.at_level(logging.DEBUG, logger=prompts.__name__):
        assert compel_prompt_kwargs(ddpm, "a (red)++ cube", "", clip_skip=0) is None
    assert "without compel" in caplog.text
    # DDPM's call takes neither a negative prompt nor clip_skip: neither is passed.
    kwargs = build_prompt_kwargs(ddpm, "a cube", "ugly", use_compel=True, clip_skip=2)
    assert kwargs == {"prompt": "a cube"}


def test_missing_compel_warns_once_and_falls_back(sd, monkeypatch, caplog):
    monkeypatch.setattr(compel_sd, "compel_available", lambda: False)
    monkeypatch.setattr(compel_sd, "_warned_missing", False)
    with caplog.at_level(logging.WARNING, logger=prompts.__name__):
        warn_if_compel_missing(True)
        warn_if_compel_missing(True)
        kwargs = build_prompt_kwargs(sd, "a (red)++ cube", "", use_compel=True, clip_skip=0)
    assert kwargs == {"prompt": "a (red)++ cube"}
    warnings = [r for r in caplog.records if "compel" in r.getMessage()]
    assert len(warnings) == 1


def test_compel_off_never_warns(monkeypatch, caplog):
    monkeypatch.setattr(compel_sd, "compel_available", lambda: False)
    monkeypatch.setattr(compel_sd, "_warned_missing", False)
    with caplog.at_level(logging.WARNING, logger=prompts.__name__):
        warn_if_compel_missing(False)
    assert not caplog.records


# -------------------------------------------------------------------------- CLIP skip


def test_clip_skip_changes_the_sd_image(sd):
    base = build_prompt_kwargs(sd, "a red cube", "", use_compel=False, clip_skip=0)
    skipped = build_prompt_kwargs(sd, "a red cube", "", use_compel=False, clip_skip=1)
    assert skipped == {"prompt": "a red cube", "clip_skip": 1}
    assert not _same(_generate(sd, **base), _generate(sd, **skipped))


def test_clip_skip_is_honoured_with_compel(sd):
    base = build_prompt_kwargs(sd, "a red cube", "", use_compel=True, clip_skip=0)
    skipped = build_prompt_kwargs(sd, "a red cube", "", use_compel=True, clip_skip=1)
    assert "clip_skip" not in skipped  # already applied to the embeddings
    assert not _same(_generate(sd, **base), _generate(sd, **skipped))
    # Same layer as diffusers picks for the positive prompt.
    reference, _ = sd.encode_prompt("a red cube", "cpu", 1, False, clip_skip=1)
    assert _same(skipped["prompt_embeds"], reference)


def test_compel_clip_skip_two_picks_the_layer_diffusers_picks(sd):
    import torch

    kwargs = build_prompt_kwargs(sd, "a red cube", "", use_compel=True, clip_skip=2)
    with torch.no_grad():
        reference, _ = sd.encode_prompt("a red cube", "cpu", 1, False, clip_skip=2)
        one, _ = sd.encode_prompt("a red cube", "cpu", 1, False, clip_skip=1)
    assert _same(kwargs["prompt_embeds"], reference)
    assert not _same(reference, one)


def test_text_model_path_shim_leaves_the_module_tree_alone(sd):
    """The transformers-5 work-around must not add a submodule or state-dict entries."""
    keys = set(sd.text_encoder.state_dict())
    modules = [name for name, _ in sd.text_encoder.named_modules()]
    build_prompt_kwargs(sd, "a", "", use_compel=False, clip_skip=1)
    assert sd.text_encoder.text_model.final_layer_norm is sd.text_encoder.final_layer_norm
    assert set(sd.text_encoder.state_dict()) == keys
    assert [name for name, _ in sd.text_encoder.named_modules()] == modules


def test_clip_skip_is_honoured_with_compel_on_sdxl(sdxl):
    base = build_prompt_kwargs(sdxl, "a red cube", "", use_compel=True, clip_skip=0)
    skipped = build_prompt_kwargs(sdxl, "a red cube", "", use_compel=True, clip_skip=1)
    assert not _same(base["prompt_embeds"], skipped["prompt_embeds"])
    reference = sdxl.encode_prompt("a red cube", device="cpu", clip_skip=1)
    assert _same(skipped["prompt_embeds"], reference[0])
    assert _same(skipped["pooled_prompt_embeds"], reference[2])
    assert not _same(_generate(sdxl, **base), _generate(sdxl, **skipped))


def test_clip_skip_deeper_than_the_encoder_is_refused(sd, sdxl):
    # The tiny encoders have 2 layers: SD can skip 2, SDXL (already penultimate) only 1.
    build_prompt_kwargs(sd, "a", "", use_compel=False, clip_skip=2)
    with pytest.raises(InvalidArgument, match="at most 2"):
        build_prompt_kwargs(sd, "a", "", use_compel=True, clip_skip=3)
    with pytest.raises(InvalidArgument, match="at most 1"):
        build_prompt_kwargs(sdxl, "a", "", use_compel=False, clip_skip=2)


def test_clip_skip_not_passed_when_disabled(sd):
    assert clip_skip_kwargs(sd, 2, enabled=False) == {}
    kwargs = build_prompt_kwargs(
        sd, "a", "", use_compel=False, clip_skip=2, clip_skip_enabled=False
    )
    assert kwargs == {"prompt": "a"}


def test_clip_skip_not_passed_when_zero(sd):
    assert clip_skip_kwargs(sd, 0, enabled=True) == {}


def test_clip_skip_not_passed_when_the_call_lacks_it(sd, ddpm):
    assert clip_skip_kwargs(sd, 2, enabled=True) == {"clip_skip": 2}
    assert clip_skip_kwargs(ddpm, 2, enabled=True) == {}
    assert clip_skip_kwargs({"prompt", "negative_prompt"}, 2, enabled=True) == {}
    assert clip_skip_kwargs({"prompt", "clip_skip"}, 2, enabled=True) == {"clip_skip": 2}


def test_request_clip_skip_wins_over_load_value():
    assert effective_clip_skip(2, 1) == 2
    assert effective_clip_skip(0, 1) == 1
    assert effective_clip_skip(0, 0) == 0
    with pytest.raises(InvalidArgument):
        effective_clip_skip(-1, 0)


def test_plain_prompts_omit_empty_negative(sd):
    assert build_prompt_kwargs(sd, "a", "", use_compel=False, clip_skip=0) == {"prompt": "a"}
