"""The step-level loop keeps the scheduler's predicted clean image (``pred_original_sample``)
on the request's slot where the scheduler gives one, for live previews to show instead of
the noisy latents; a scheduler that gives none leaves it unset. Real tiny SD pipeline."""

from __future__ import annotations

import pytest
import torch

from diffusers_backend.tasks import denoise

CALL = dict(prompt="a cat", num_inference_steps=3, guidance_scale=7.0, width=64, height=64)


@pytest.fixture(scope="module")
def sd_pipe():
    import diffusers
    from tiny_models import tiny_sd_path

    pipe = diffusers.DiffusionPipeline.from_pretrained(str(tiny_sd_path()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def one_step(pipe, scheduler: str):
    import diffusers

    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    loop = denoise.loop_for(pipe)
    assert loop is not None
    with torch.no_grad():
        slot = loop.admit(pipe, dict(CALL, generator=torch.Generator("cpu").manual_seed(1)))
        slot.loop = loop
        noisy = slot.latents
        denoise.step_together(pipe, [slot])
    return slot, noisy


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "EulerDiscreteScheduler"])
def test_a_scheduler_with_a_clean_prediction_leaves_it_on_the_slot(sd_pipe, scheduler):
    slot, noisy = one_step(sd_pipe, scheduler)
    assert slot.index == 1 and slot.clean is not None
    assert slot.clean.shape == slot.latents.shape == noisy.shape
    assert not torch.allclose(slot.clean.float(), slot.latents.float())


def test_a_scheduler_without_one_leaves_none(sd_pipe):
    slot, _ = one_step(sd_pipe, "DPMSolverMultistepScheduler")
    assert slot.index == 1 and slot.clean is None
