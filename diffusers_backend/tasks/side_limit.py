"""The per-side limit: no side longer than ``DIFFUSERS_MAX_SIDE_FACTOR`` times the model's
native side, so an absurd aspect ratio (10000x64 passes the pixel limit) is refused at
validation instead of running for minutes."""

from __future__ import annotations

from typing import Any

from diffusers_backend.errors import InvalidArgument
from diffusers_backend.settings import Settings

DENOISERS = ("unet", "transformer", "transformer_2", "prior")


def denoiser(pipe: Any) -> Any:
    """The pipeline's denoising model (UNet or transformer), or None."""
    for name in DENOISERS:
        model = getattr(pipe, name, None)
        if model is not None:
            return model
    return None


def native_side(pipe: Any) -> int:
    """The side the model was trained at: its sample size x the VAE factor (SD 1.x 512,
    SDXL/SD3/Flux 1024); the pipeline's own default where it keeps one."""
    sample = getattr(pipe, "default_sample_size", None) or getattr(
        getattr(denoiser(pipe), "config", None), "sample_size", None)
    if isinstance(sample, (tuple, list)):
        sample = max(sample)
    factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    return int(sample or 64) * factor


def check_sides(width: int, height: int, pipe: Any, settings: Settings) -> None:
    """Refuse a side above the limit (0 = the model's default size: always fine)."""
    if not settings.max_side_factor or pipe is None or denoiser(pipe) is None:
        return
    native = native_side(pipe)
    limit = native * settings.max_side_factor
    for name, value in (("width", width), ("height", height)):
        if value > limit:
            raise InvalidArgument(
                f"{name} {value} is above the limit of {limit} for this model ({native} "
                f"native x {settings.max_side_factor}, DIFFUSERS_MAX_SIDE_FACTOR)")
