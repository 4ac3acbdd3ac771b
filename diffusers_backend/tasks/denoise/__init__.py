"""Denoising loops the engine owns, for step-level batching (docs/engine.md).

For the families most people serve (Stable Diffusion 1.x/2.x and SDXL on a UNet, SD3 on an
MMDiT), text-to-image requests are denoised step by step, many at once: each request keeps
its own scheduler copy, latents, generator, guidance scale and step count; its prompts are
encoded once at admission; every step is one batched denoiser call over all active requests
at their own timesteps; a finished request is decoded while the others go on. A request
served this way gives the picture the pipeline's own call gives (tests/unit/test_denoise.py).

Everything else (other families and schedulers, img2img, inpainting, ControlNet, compel
embeddings, call options these loops do not honour) stays with request-level batching.
"""

from __future__ import annotations

from typing import Any

from diffusers_backend.loading.acceleration.caches import has_step_cache
from diffusers_backend.tasks.denoise import sd3, unet
from diffusers_backend.tasks.denoise.slot import DenoiseLoop, Slot

# Every family's loop, asked in order (as diffusers' AutoPipeline tables are): a new family
# is a module satisfying DenoiseLoop, added here (docs/development.md, "Recipes").
LOOPS: tuple[DenoiseLoop, ...] = (unet, sd3)
# Schedulers checked to step per request exactly as in the pipeline call (test_denoise.py).
SUPPORTED_SCHEDULERS = frozenset({
    "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "HeunDiscreteScheduler",
    "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "FlowMatchEulerDiscreteScheduler",
})


def loop_for(pipe: Any) -> DenoiseLoop | None:
    """The loop that can denoise for ``pipe`` with its current scheduler, or None."""
    if type(getattr(pipe, "scheduler", None)).__name__ not in SUPPORTED_SCHEDULERS:
        return None
    for loop in LOOPS:
        if loop.serves(pipe):
            return loop
    return None


def step_key(plan: Any) -> tuple | None:
    """Plans with equal keys can share denoising steps; None: request-level batching only.

    A plain text-to-image plan of a family with a loop, whose model call options are all
    honoured by the loop; the key holds the model and the latent size (step counts, seeds,
    prompts and guidance may differ).
    """
    from diffusers_backend.tasks.image import ImagePlan

    if not isinstance(plan, ImagePlan) or plan.batch_key() is None:
        return None
    loaded = plan.loaded
    loop = loop_for(loaded.pipe)
    if loop is None or set(loaded.spec.call_options) - loop.KEYS:
        return None
    if has_step_cache(loaded.pipe):  # a step cache's reuse follows one generation's steps
        return None
    return ("steps", id(loaded), loop_name(loop), plan.width, plan.height,
            plan.loras.key())


def loop_name(loop: DenoiseLoop) -> str:
    """The loop's name in keys and logs (its module's name)."""
    return str(getattr(loop, "__name__", type(loop).__name__))


def admit(plan: Any, variants: Any) -> Slot:
    """Start ``plan``'s denoising: the same call the pipeline would get, taken apart."""
    import torch

    pipe, call, facts = plan.build_call(variants)
    loop = loop_for(pipe)
    if loop is None:
        raise RuntimeError(f"no denoising loop serves {type(pipe).__name__}")
    with torch.no_grad():
        slot = loop.admit(pipe, call)
    slot.loop, slot.facts = loop, facts
    return slot


def step_together(pipe: Any, slots: list[Slot]) -> None:
    """One denoising step for every slot (all of one loop and size), one denoiser call."""
    import torch

    loop = slots[0].loop
    assert loop is not None  # set at admission
    with torch.no_grad():
        loop.step(pipe, slots)


def decode(pipe: Any, slot: Slot) -> Any:
    """The finished slot's picture, as the plan's writer takes it (with its call's facts
    when the slot was admitted from a plan; the bare picture otherwise)."""
    import torch

    from diffusers_backend.tasks.image import ImageOutput

    assert slot.loop is not None  # set at admission
    with torch.no_grad():
        picture = slot.loop.decode(pipe, slot)
    return picture if slot.facts is None else ImageOutput(picture, slot.facts)
