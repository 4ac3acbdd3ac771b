"""The denoising loops the engine owns give the pictures the pipelines' own calls give.

Real tiny pipelines (SD 1.x, SDXL, SD3). Four requests of different step counts, guidance
scales and negative prompts join the loop one step apart and leave when their own steps are
done; each picture is compared with the same request served alone by ``pipe(**call)``.
Tolerance: at most 2 of 255 per channel (batched matrix products may round the last float
bits differently from batch-of-one ones; on this CPU the largest difference seen is 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusers_backend.tasks import denoise

TOLERANCE = 2  # of 255, per pixel channel


def _calls() -> list[dict]:
    return [dict(prompt=f"a cat number {i}", negative_prompt="blurry" if i % 2 else None,
                 num_inference_steps=[3, 6, 2, 4][i], guidance_scale=[7.0, 1.0, 4.5, 7.0][i],
                 width=64, height=64, seed=100 + i) for i in range(4)]


def _with_generator(call: dict) -> dict:
    call = {k: v for k, v in call.items() if v is not None}
    seed = call.pop("seed")
    return dict(call, generator=torch.Generator("cpu").manual_seed(seed))


def _alone(pipe, call: dict) -> np.ndarray:
    return np.asarray(pipe(**_with_generator(call)).images[0]).astype(int)


def _together(pipe, calls: list[dict]) -> tuple[list[np.ndarray], list[int]]:
    """Admit one request at every step; step all active ones together (with 3, 6, 2 and 4
    steps, three requests share the third step)."""
    loop = denoise.loop_for(pipe)
    pending, active, done, sizes = list(enumerate(calls)), {}, {}, []
    step = 0
    while pending or active:
        if pending:
            index, call = pending.pop(0)
            with torch.no_grad():
                slot = loop.admit(pipe, _with_generator(call))
            slot.loop = loop
            active[index] = slot
        sizes.append(len(active))
        denoise.step_together(pipe, list(active.values()))
        for index, slot in list(active.items()):
            if slot.done:
                done[index] = np.asarray(denoise.decode(pipe, slot)).astype(int)
                del active[index]
        step += 1
    return [done[i] for i in range(len(calls))], sizes


def _pipe(path_builder, scheduler: str | None = None, pipe=None):
    import diffusers

    if pipe is None:
        pipe = diffusers.DiffusionPipeline.from_pretrained(str(path_builder()))
        pipe.set_progress_bar_config(disable=True)
        pipe.saved_scheduler_config = pipe.scheduler.config  # each test starts from the model's
    if scheduler is not None:
        config = pipe.saved_scheduler_config
        pipe.scheduler = getattr(diffusers, scheduler).from_config(config)
    return pipe


@pytest.fixture(scope="module")
def sd_pipe():
    from tiny_models import tiny_sd_path

    return _pipe(tiny_sd_path)


def _check(pipe) -> None:
    calls = _calls()
    alone = [_alone(pipe, call) for call in calls]
    together, sizes = _together(pipe, calls)
    assert max(sizes) >= 3, "the requests never shared a step"
    for index, (a, b) in enumerate(zip(alone, together, strict=True)):
        assert np.abs(a - b).max() <= TOLERANCE, f"request {index} differs from served alone"


UNET_SCHEDULERS = sorted(denoise.SUPPORTED_SCHEDULERS - {"FlowMatchEulerDiscreteScheduler"})


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", UNET_SCHEDULERS)
def test_sd_in_the_loop_equals_served_alone(scheduler, sd_pipe):
    _check(_pipe(None, scheduler, pipe=sd_pipe))


@pytest.mark.slow
def test_sdxl_in_the_loop_equals_served_alone():
    from tiny_models import tiny_sdxl_path

    _check(_pipe(tiny_sdxl_path))


@pytest.mark.slow
def test_sd3_in_the_loop_equals_served_alone():
    from tiny_image_models import tiny_sd3_path

    _check(_pipe(tiny_sd3_path))


def test_unsupported_schedulers_and_families_have_no_loop():
    from tiny_image_models import tiny_flux_path
    from tiny_models import tiny_sd_path

    assert denoise.loop_for(_pipe(tiny_sd_path, "PNDMScheduler")) is None
    assert denoise.loop_for(_pipe(tiny_sd_path)) is not None
    assert denoise.loop_for(_pipe(tiny_flux_path)) is None
