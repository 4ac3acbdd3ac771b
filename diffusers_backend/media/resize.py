"""The Lanczos upscale UpscaleImage uses when no upscaler pipeline is loaded."""

from __future__ import annotations

import numpy as np
from PIL import Image

from diffusers_backend.errors import InvalidArgument

# --------------------------------------------------------------------------- upscale


def lanczos_upscale(image: Image.Image, scale: int, *, max_pixels: int) -> Image.Image:
    """Resize by an integer factor with Lanczos; scale 0 means the default of 2.

    The result size is checked against ``max_pixels`` from the sizes alone, so an
    absurd scale is refused instantly instead of allocating gigabytes.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)):
        raise InvalidArgument(f"scale must be a whole number, got {scale!r}")
    scale = int(scale)
    if scale < 0:
        raise InvalidArgument(
            f"scale must be 0 (default 2) or a positive whole number, got {scale}"
        )
    if scale == 0:
        scale = 2
    width, height = image.size
    new_w, new_h = width * scale, height * scale
    if new_w * new_h > max_pixels:
        raise InvalidArgument(
            f"upscaling {width}x{height} by {scale} gives {new_w}x{new_h} "
            f"({new_w * new_h} pixels), above the limit of {max_pixels} pixels; "
            f"use a smaller scale"
        )
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGB")
    if scale == 1:
        return image.copy()
    return image.resize((new_w, new_h), Image.Resampling.LANCZOS)

