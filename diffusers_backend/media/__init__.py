"""Everything that touches a user-supplied file path, so every request gets the same
answers: ``inputs`` (uploads, masks, inpainting JSON), ``files`` (output checks and atomic
PNG writes), ``video`` (MP4 with optional audio), ``resize`` (the Lanczos upscale)."""

from diffusers_backend.media.files import check_output_path, image_to_png_bytes, write_png_atomic
from diffusers_backend.media.inputs import (
    check_input_path,
    is_inpaint_json,
    load_inpaint_inputs,
    open_image,
    open_mask,
)
from diffusers_backend.media.resize import lanczos_upscale
from diffusers_backend.media.video import audio_samples, write_video_atomic

__all__ = [
    "audio_samples",
    "check_input_path",
    "check_output_path",
    "image_to_png_bytes",
    "is_inpaint_json",
    "lanczos_upscale",
    "load_inpaint_inputs",
    "open_image",
    "open_mask",
    "write_png_atomic",
    "write_video_atomic",
]
