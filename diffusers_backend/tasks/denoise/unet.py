"""The denoising loop for Stable Diffusion 1.x/2.x and SDXL text-to-image (UNet), step by
step, for many requests at once; each step is the pipeline's own ``__call__`` step for each
request (same encode_prompt, prepare_latents, scale_model_input, CFG, scheduler step)."""

from __future__ import annotations

import copy
from typing import Any

from diffusers_backend.tasks.denoise.slot import (
    Slot,
    guide_and_step,
    scheduler_in_place,
    set_timesteps,
    stacked,
    stacked_rows,
)

# Call arguments this loop honours; a call with any other goes to the pipeline itself.
KEYS = frozenset({"prompt", "negative_prompt", "num_inference_steps", "generator", "width",
                  "height", "guidance_scale", "clip_skip", "eta"})


def serves(pipe: Any) -> bool:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if type(pipe) not in (StableDiffusionPipeline, StableDiffusionXLPipeline):
        return False
    unet = pipe.unet.config
    # LCM-style guidance embeddings and image-prompt adapters are left to the pipeline.
    return (getattr(unet, "time_cond_proj_dim", None) is None
            and getattr(unet, "encoder_hid_dim_type", None) is None)


def admit(pipe: Any, call: dict[str, Any]) -> Slot:
    """Encode the prompts once, copy the scheduler, draw the first latents."""
    import torch

    device = pipe._execution_device
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = call.get("height") or size, call.get("width") or size
    guidance = float(call.get("guidance_scale", 7.5))
    cfg = guidance > 1
    prompt, negative, clip_skip = call["prompt"], call.get("negative_prompt"), call.get("clip_skip")
    if hasattr(pipe, "text_encoder_2"):  # SDXL: two encoders, pooled embeddings, size ids
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(
            prompt, None, device, 1, cfg, negative, clip_skip=clip_skip)
        projection = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                      else pipe.text_encoder_2.config.projection_dim)
        ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=pos.dtype,
                                     text_encoder_projection_dim=projection).to(device)
        rows = {"encoder_hidden_states": torch.cat([neg, pos]) if cfg else pos,
                "text_embeds": torch.cat([neg_pooled, pooled]) if cfg else pooled,
                "time_ids": torch.cat([ids, ids]) if cfg else ids}
    else:
        pos, neg = pipe.encode_prompt(prompt, device, 1, cfg, negative, clip_skip=clip_skip)
        rows = {"encoder_hidden_states": torch.cat([neg, pos]) if cfg else pos}
    scheduler = copy.deepcopy(pipe.scheduler)
    timesteps = set_timesteps(pipe, scheduler, call["num_inference_steps"], device)
    generator = call["generator"]
    with scheduler_in_place(pipe, scheduler):
        latents = pipe.prepare_latents(1, pipe.unet.config.in_channels, height, width,
                                       pos.dtype, device, generator, None)
        extra = pipe.prepare_extra_step_kwargs(generator, call.get("eta", 0.0))
    return Slot(scheduler, timesteps, latents, rows, guidance, cfg, generator, extra)


def step(pipe: Any, slots: list[Slot]) -> None:
    """One UNet call over every request's rows, each at its own timestep."""
    import torch

    inputs, times = [], []
    for slot in slots:
        t = slot.timestep()
        x = torch.cat([slot.latents] * 2) if slot.cfg else slot.latents
        inputs.append(slot.scheduler.scale_model_input(x, t))
        times.append(t.reshape(1).to(torch.float32).expand(x.shape[0]))
    rows = stacked_rows(slots)
    added = None
    if "text_embeds" in rows:
        added = {"text_embeds": rows.pop("text_embeds"), "time_ids": rows.pop("time_ids")}
    # A lone request passes its timestep as the pipeline does (a scalar, no per-row copy).
    timestep = slots[0].timestep() if len(slots) == 1 else stacked(times)
    output = pipe.unet(stacked(inputs), timestep,
                       encoder_hidden_states=rows["encoder_hidden_states"],
                       added_cond_kwargs=added, return_dict=False)[0]
    guide_and_step(slots, output)


def decode(pipe: Any, slot: Slot) -> Any:
    """The finished request's picture, decoded as the pipeline decodes it."""
    if hasattr(pipe, "text_encoder_2"):
        return _decode_xl(pipe, slot)
    image = pipe.vae.decode(slot.latents / pipe.vae.config.scaling_factor, return_dict=False,
                            generator=slot.generator)[0]
    image, nsfw = pipe.run_safety_checker(image, image.device, image.dtype)
    denormalize = [True] if nsfw is None else [not flagged for flagged in nsfw]
    return pipe.image_processor.postprocess(image, output_type="pil",
                                            do_denormalize=denormalize)[0]


def _decode_xl(pipe: Any, slot: Slot) -> Any:
    """SDXL: an fp16 VAE that must not run in fp16 decodes in fp32; latents mean/std where the
    VAE has them; the invisible watermark where the pipeline applies one."""
    import torch

    vae, latents = pipe.vae, slot.latents
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        pipe.upcast_vae()
        latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
    elif latents.dtype != vae.dtype:
        latents = latents.to(vae.dtype)
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    image = vae.decode(latents, return_dict=False)[0]
    if upcast:
        vae.to(dtype=torch.float16)
    if getattr(pipe, "watermark", None) is not None:
        image = pipe.watermark.apply_watermark(image)
    return pipe.image_processor.postprocess(image, output_type="pil")[0]
