"""The rules every pipeline call follows, whatever the task: what a pipeline's ``__call__``
accepts, sizes, steps, seeds, the cancel callback and the model's defaults.

Everything a pipeline's ``__call__`` does not accept is left out (looked up once per class),
so the same code serves SD, SDXL, Flux, SVD and pipelines diffusers adds later. The task
modules (``tasks.image``, ``tasks.video``, ``tasks.upscale``) build their calls from these.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from diffusers_backend.errors import Cancelled, InvalidArgument
from diffusers_backend.loading.options_table import accepted_call_keys
from diffusers_backend.registry.signatures import CallSignature
from diffusers_backend.settings import Settings
from diffusers_backend.tasks.side_limit import check_sides

if TYPE_CHECKING:
    from diffusers_backend.loading.pipeline_loader import LoadedPipeline

DEFAULT_STEPS = 25
DEFAULT_CFG = 7.0
DEFAULT_IMG2IMG_STRENGTH = 0.75
MAX_SEED = 2**31 - 1
IsCancelled = Callable[[], bool]  # the cancel probe every layer above passes down
# (pipe, 0-based step, callback kwargs) after each step of a call; set by engine/progress.py
# (the layer above), which reports it to whoever watches.
step_reporter: Callable[[Any, int, dict[str, Any]], None] | None = None


class PictureOutput:
    """Base of a call's output that carries one PIL picture in ``image``: its size, which
    the request log notes when the writer is done (``timings.wrote``)."""

    image: Any

    @property
    def width(self) -> int:
        return int(self.image.width)

    @property
    def height(self) -> int:
        return int(self.image.height)


def unaccepted_call_options(pipe: Any, options: dict[str, Any]) -> list[str]:
    """Call options that no call of this pipeline (or its img2img/inpaint variants) takes.

    LocalAI's backend hands every option to the pipeline call, which swallows what it does
    not know; we drop those at load time with a warning instead of passing them on.
    """
    accepted = accepted_call_keys(type(pipe))
    if "num_frames" in accepted:  # a video model: the frame rate of the file it writes
        accepted |= {"fps", "frame_rate"}
    return sorted(k for k in options if k not in accepted)


def size_multiple(pipe: Any) -> int:
    """The multiple width/height must be: 8, the VAE factor times the patch size, or the
    image processor's factor where that is larger (latent packing)."""
    factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    transformer = getattr(pipe, "transformer", None)
    patch = getattr(getattr(transformer, "config", None), "patch_size", 1) or 1
    if isinstance(patch, (tuple, list)):
        patch = patch[-1]
    # Pipelines that pack latents (Flux: 2x2) say so in their image processor's factor.
    processor = getattr(getattr(pipe, "image_processor", None), "config", None)
    packed = int(getattr(processor, "vae_scale_factor", 0) or 0)
    return max(8, factor * int(patch), packed)


def check_size(width: int, height: int, pipe: Any, settings: Settings) -> tuple[int, int, str]:
    """Validate width/height; snap them down to the pipeline's multiple (noted in the reply)."""
    for name, value in (("width", width), ("height", height)):
        if value < 0:
            raise InvalidArgument(
                f"{name} must be positive (or 0 for the model default), got {value}"
            )
    if width * height > settings.max_pixels:
        raise InvalidArgument(
            f"{width}x{height} is {width * height} pixels, above the limit of "
            f"{settings.max_pixels} (DIFFUSERS_MAX_PIXELS)"
        )
    check_sides(width, height, pipe, settings)
    multiple = size_multiple(pipe)
    snapped = [v - v % multiple if v else 0 for v in (width, height)]
    for name, value, original in zip(("width", "height"), snapped, (width, height), strict=True):
        if original and value == 0:
            raise InvalidArgument(f"{name} {original} is below the minimum of {multiple}")
    note = ""
    if (snapped[0], snapped[1]) != (width, height):
        note = (f"size snapped from {width}x{height} to {snapped[0]}x{snapped[1]} "
                f"(a multiple of {multiple})")
    return snapped[0], snapped[1], note


def check_steps(steps: int, settings: Settings) -> None:
    if steps < 0:
        raise InvalidArgument(f"step must be positive (or 0 for the default), got {steps}")
    if steps > settings.max_steps:
        raise InvalidArgument(f"step {steps} is above the limit of {settings.max_steps} "
                              "(DIFFUSERS_MAX_STEPS)")


def pick_seed(seed: int) -> int:
    """The request's seed when positive, else a fresh random one for this image.

    LocalAI sends ``seed = -1`` (images) or ``0`` (inpainting, video) for "random", and a
    ``ModelOptions.Seed`` drawn once per load: using that as a default would make every
    unseeded image identical, so it never is one. The seed used is reported in the reply,
    so a random image can be reproduced.
    """
    if seed and seed > 0:
        return int(seed)
    return secrets.randbelow(MAX_SEED) + 1


def make_generator(seed: int) -> Any:
    """A CPU generator: the same seed gives the same noise on every device."""
    import torch

    return torch.Generator("cpu").manual_seed(seed)


def cancel_callback(is_cancelled: IsCancelled) -> Callable[..., dict[str, Any]]:
    """A step callback that stops the denoising loop once the client has gone, and reports
    the step to :data:`step_reporter` (the live progress hub, when the engine is loaded)."""

    def on_step_end(pipe: Any, step: int, timestep: Any,
                    callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if is_cancelled():
            raise Cancelled(f"request cancelled by the client at step {step + 1}")
        if step_reporter is not None:
            step_reporter(pipe, step, callback_kwargs)
        return callback_kwargs

    return on_step_end


def accepted_kwargs(kwargs: dict[str, Any], sig: CallSignature) -> dict[str, Any]:
    """The keyword arguments this call takes (embeddings always: prompt code sets them).

    ``EnableParameters`` filters nothing: LocalAI's backend has ignored it since Dec 2025,
    and gallery YAMLs that still list ``num_inference_steps`` would lose the user's negative
    prompt.
    """
    out = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        if sig.accepts(key) or key in {"prompt_embeds", "negative_prompt_embeds"}:
            out[key] = value
    return out


def model_defaults(loaded: LoadedPipeline, sig: CallSignature) -> dict[str, Any]:
    """Load-time call options and cfg scale, limited to what this pipeline call accepts."""
    spec = loaded.spec
    defaults: dict[str, Any] = {}
    if sig.accepts("guidance_scale"):
        defaults["guidance_scale"] = spec.cfg_scale or DEFAULT_CFG
    for key, value in spec.call_options.items():
        if sig.accepts(key):
            defaults[key] = value
    return defaults


def size_kwargs(width: int, height: int) -> dict[str, int]:
    """The request's width/height where set; 0 leaves the option default or the model's."""
    return {k: v for k, v in (("width", width), ("height", height)) if v}


def option_int(loaded: LoadedPipeline, key: str) -> int:
    """A whole-number call option (``width:768``), or 0; other types are left to the call."""
    value = loaded.spec.call_options.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def steps_or_default(job_steps: int, loaded: LoadedPipeline) -> int:
    return job_steps or int(loaded.spec.call_options.get("num_inference_steps", DEFAULT_STEPS))


