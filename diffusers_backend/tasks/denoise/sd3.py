"""The denoising loop for Stable Diffusion 3 / 3.5 text-to-image (MMDiT, flow matching), step
by step, for many requests at once, following ``StableDiffusion3Pipeline.__call__``."""

from __future__ import annotations

import copy
from typing import Any

from diffusers_backend.tasks.denoise.slot import (
    Slot,
    guide_and_step,
    set_timesteps,
    stacked,
    stacked_rows,
)

KEYS = frozenset({"prompt", "negative_prompt", "num_inference_steps", "generator", "width",
                  "height", "guidance_scale", "clip_skip", "max_sequence_length"})


def serves(pipe: Any) -> bool:
    from diffusers import StableDiffusion3Pipeline

    return type(pipe) is StableDiffusion3Pipeline


def admit(pipe: Any, call: dict[str, Any]) -> Slot:
    """Encode the prompts once (CLIP x2 + T5), draw the latents, set the request's sigmas."""
    import torch

    device = pipe._execution_device
    size = pipe.default_sample_size * pipe.vae_scale_factor
    height, width = call.get("height") or size, call.get("width") or size
    guidance = float(call.get("guidance_scale", 7.0))
    cfg = guidance > 1
    generator = call["generator"]
    pos, neg, pooled, neg_pooled = pipe.encode_prompt(
        call["prompt"], None, None, device=device, num_images_per_prompt=1,
        do_classifier_free_guidance=cfg, negative_prompt=call.get("negative_prompt"),
        clip_skip=call.get("clip_skip"),
        max_sequence_length=call.get("max_sequence_length", 256))
    rows = {"encoder_hidden_states": torch.cat([neg, pos]) if cfg else pos,
            "pooled_projections": torch.cat([neg_pooled, pooled]) if cfg else pooled}
    latents = pipe.prepare_latents(1, pipe.transformer.config.in_channels, height, width,
                                   pos.dtype, device, generator, None)
    scheduler = copy.deepcopy(pipe.scheduler)
    shift: dict[str, Any] = {}
    if scheduler.config.get("use_dynamic_shifting", None):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift,
        )

        patch = pipe.transformer.config.patch_size
        tokens = (latents.shape[2] // patch) * (latents.shape[3] // patch)
        config = scheduler.config
        shift["mu"] = calculate_shift(tokens, config.get("base_image_seq_len", 256),
                                      config.get("max_image_seq_len", 4096),
                                      config.get("base_shift", 0.5),
                                      config.get("max_shift", 1.16))
    timesteps = set_timesteps(pipe, scheduler, call["num_inference_steps"], device, **shift)
    return Slot(scheduler, timesteps, latents, rows, guidance, cfg, generator)


def step(pipe: Any, slots: list[Slot]) -> None:
    """One transformer call over every request's rows, each at its own timestep."""
    import torch

    inputs, times = [], []
    for slot in slots:
        x = torch.cat([slot.latents] * 2) if slot.cfg else slot.latents
        inputs.append(x)
        times.append(slot.timestep().reshape(1).expand(x.shape[0]))
    output = pipe.transformer(hidden_states=stacked(inputs), timestep=stacked(times),
                              return_dict=False, **stacked_rows(slots))[0]
    guide_and_step(slots, output)


def decode(pipe: Any, slot: Slot) -> Any:
    vae = pipe.vae
    latents = slot.latents / vae.config.scaling_factor + vae.config.shift_factor
    image = vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="pil")[0]
