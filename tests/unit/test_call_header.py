"""The call header the image, video and upscale tasks share (tasks/call_header.py), on the
signatures of real diffusers pipeline classes: the model's defaults, steps, the seeded
generator, the size, the filter to accepted keys and the cancel callback.

Only the classes' ``__call__`` signatures are read, so no weights are loaded (``pipe`` is
not called here; the tasks' own tests run real tiny pipelines through the header)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionUpscalePipeline

from diffusers_backend.errors import Cancelled
from diffusers_backend.registry.signatures import call_signature
from diffusers_backend.tasks.call_header import CallHeader
from diffusers_backend.tasks.calls import DEFAULT_CFG


def _header(cls: type) -> CallHeader:
    return CallHeader(None, call_signature(cls))


def _loaded(cfg_scale: float = 0.0, **call_options: object) -> SimpleNamespace:
    return SimpleNamespace(spec=SimpleNamespace(cfg_scale=cfg_scale, call_options=call_options))


def test_defaults_are_the_models_options_this_call_accepts():
    head = _header(StableDiffusionPipeline)
    assert head.defaults(_loaded(eta=0.5, fps=8)) == {"guidance_scale": DEFAULT_CFG,
                                                      "eta": 0.5}
    assert head.defaults(_loaded(cfg_scale=3.5))["guidance_scale"] == 3.5


def test_noise_is_the_plans_steps_seeded_generator_and_size_where_set():
    head = _header(StableDiffusionPipeline)
    first, again = head.noise(7, 12, 64, 0), head.noise(7, 12, 64, 0)
    assert set(first) == {"num_inference_steps", "generator", "width"}  # height 0: default
    assert first["num_inference_steps"] == 12 and first["width"] == 64
    assert torch.equal(torch.randn(4, generator=first["generator"]),
                       torch.randn(4, generator=again["generator"]))  # same seed, same noise
    assert set(head.noise(7)) == {"generator"}  # steps None: the options' or the pipeline's


def test_finish_keeps_what_the_call_takes_and_adds_the_cancel_callback():
    head = _header(StableDiffusionPipeline)
    gone = [False]
    call = head.finish({"prompt": "x", "fps": 8, "eta": None, "prompt_embeds": "kept"},
                       lambda: gone[0])
    assert set(call) == {"prompt", "prompt_embeds", "callback_on_step_end"}
    callback = call["callback_on_step_end"]
    assert callback(None, 0, None, {"latents": 1}) == {"latents": 1}
    gone[0] = True
    with pytest.raises(Cancelled, match="at step 3"):
        callback(None, 2, None, {})


def test_a_call_without_a_step_callback_gets_none():
    """The x4 upscaler's call takes no ``callback_on_step_end``; it runs uncancellable."""
    head = _header(StableDiffusionUpscalePipeline)
    assert head.finish({"prompt": "", "width": 64}, lambda: True) == {"prompt": ""}
