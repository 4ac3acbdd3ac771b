"""Turn a validated job into one diffusers pipeline call, and its result into a file.

Everything a pipeline's ``__call__`` does not accept is left out (looked up once per class),
so the same code serves SD, SDXL, Flux, SVD and pipelines diffusers adds later.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import media, prompts
from .errors import Cancelled, FailedPrecondition, InvalidArgument, LoadError
from .jobs import ImageJob, UpscaleJob, VideoJob
from .loading.pipeline_loader import LoadedPipeline
from .loading.spec import parse_option_value
from .settings import Settings

log = logging.getLogger(__name__)

DEFAULT_STEPS = 25
DEFAULT_CFG = 7.0
DEFAULT_IMG2IMG_STRENGTH = 0.75
MAX_SEED = 2**31 - 1
# Request fields that EnableParameters may switch off (LocalAI semantics).
FILTERABLE = ("negative_prompt", "num_inference_steps", "clip_skip", "guidance_scale")
_NEEDS_IMAGE = re.compile(
    r"Img2Img|ImageToImage|Inpaint|ControlNet|Upscale|InstructPix2Pix|Variation"
    r"|StableVideoDiffusion|ImageToVideo|I2V",
)

IsCancelled = Callable[[], bool]


@dataclass(frozen=True)
class CallSignature:
    """What a pipeline class's ``__call__`` accepts."""

    params: frozenset[str]
    required_image: bool
    var_kwargs: bool

    def accepts(self, name: str) -> bool:
        return name in self.params


@functools.lru_cache(maxsize=256)
def call_signature(cls: type) -> CallSignature:
    """Inspect a pipeline class once; cached because it runs on every request."""
    parameters = inspect.signature(cls.__call__).parameters
    names = frozenset(n for n in parameters if n != "self")
    var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    image = parameters.get("image")
    required = image is not None and (
        image.default is inspect.Parameter.empty or bool(_NEEDS_IMAGE.search(cls.__name__))
    )
    return CallSignature(names - {"kwargs"}, required, var_kwargs)


def validate_call_options(pipe: Any, options: dict[str, Any]) -> None:
    """Refuse at load time an option no call of this pipeline (or its variants) accepts."""
    accepted = set(call_signature(type(pipe)).params)
    for variant in _task_variant_classes(pipe):
        accepted |= call_signature(variant).params
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise LoadError(
            f"option {', '.join(unknown)} is not accepted by {type(pipe).__name__}; accepted: "
            + ", ".join(sorted(accepted - {"callback_on_step_end_tensor_inputs"}))
        )


def _task_variant_classes(pipe: Any) -> list[type]:
    """The img2img/inpainting classes diffusers would switch this pipeline to."""
    from diffusers.pipelines import auto_pipeline

    found = []
    for mapping in (auto_pipeline.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
                    auto_pipeline.AUTO_INPAINT_PIPELINES_MAPPING):
        try:
            found.append(auto_pipeline._get_task_class(mapping, type(pipe).__name__, False))
        except Exception:  # noqa: BLE001 - families diffusers has no mapping for
            continue
    return [cls for cls in found if cls is not None]


def size_multiple(pipe: Any) -> int:
    """The multiple width/height must be: 8, or the VAE factor times the patch size."""
    factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    transformer = getattr(pipe, "transformer", None)
    patch = getattr(getattr(transformer, "config", None), "patch_size", 1) or 1
    if isinstance(patch, (tuple, list)):
        patch = patch[-1]
    return max(8, factor * int(patch))


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
    """A positive seed is used as is; otherwise a random one (reported to the user)."""
    return seed if seed > 0 else secrets.randbelow(MAX_SEED) + 1


def make_generator(seed: int) -> Any:
    """A CPU generator: the same seed gives the same noise on every device."""
    import torch

    return torch.Generator("cpu").manual_seed(seed)


def cancel_callback(is_cancelled: IsCancelled) -> Callable[..., dict]:
    """A step callback that stops the denoising loop once the client has gone."""

    def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        if is_cancelled():
            raise Cancelled(f"request cancelled by the client at step {step + 1}")
        return callback_kwargs

    return on_step_end


def _enabled(enable_parameters: str) -> set[str] | None:
    """EnableParameters: None means everything; "none" means nothing filterable."""
    text = enable_parameters.strip()
    if not text:
        return None
    if text.lower() == "none":
        return set()
    return {p.strip() for p in text.split(",") if p.strip()}


def _filter(kwargs: dict[str, Any], sig: CallSignature, enabled: set[str] | None) -> dict:
    out = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        if enabled is not None and key in FILTERABLE and key not in enabled:
            continue
        if sig.accepts(key) or key in {"prompt_embeds", "negative_prompt_embeds"}:
            out[key] = value
    return out


def _defaults(loaded: LoadedPipeline, sig: CallSignature) -> dict[str, Any]:
    """Load-time call options and cfg scale, limited to what this pipeline call accepts."""
    spec = loaded.spec
    defaults: dict[str, Any] = {}
    if sig.accepts("guidance_scale"):
        defaults["guidance_scale"] = spec.cfg_scale or DEFAULT_CFG
    for key, value in spec.call_options.items():
        if sig.accepts(key):
            defaults[key] = value
    return defaults


def _steps(job_steps: int, loaded: LoadedPipeline) -> int:
    return job_steps or int(loaded.spec.call_options.get("num_inference_steps", DEFAULT_STEPS))


def _select_image_pipeline(loaded: LoadedPipeline, variants: Any, job: ImageJob,
                           settings: Settings) -> tuple[Any, dict[str, Any]]:
    """Pick txt2img / img2img / inpaint on the loaded weights and open the input images."""
    pipe = loaded.pipe
    sig = call_signature(type(pipe))
    inpaint = media.load_inpaint_inputs(job.src, list(job.ref_images),
                                        max_pixels=settings.max_input_pixels)
    if inpaint is not None:
        image, mask = inpaint
        target = pipe if sig.accepts("mask_image") else variants.get("inpaint")
        return target, {"image": image, "mask_image": mask}
    source = job.src or (job.ref_images[0] if job.ref_images else "")
    if not source:
        if sig.required_image:
            raise InvalidArgument(
                f"the loaded {type(pipe).__name__} needs an input image: send src "
                "(or ref_images) with the request"
            )
        return pipe, {}
    field = "src" if job.src else "ref_images[0]"
    image = media.open_image(source, field=field, max_pixels=settings.max_input_pixels)
    if sig.accepts("image"):
        return pipe, {"image": image}
    return variants.get("img2img"), {"image": image}


def run_image(loaded: LoadedPipeline, variants: Any, job: ImageJob, settings: Settings,
              is_cancelled: IsCancelled) -> str:
    """Validate, run one image generation and write the PNG; return the reply message."""
    check_steps(job.steps, settings)
    width, height, note = check_size(job.width, job.height, loaded.pipe, settings)
    media.check_output_path(job.dst)
    pipe, image_kwargs = _select_image_pipeline(loaded, variants, job, settings)
    sig = call_signature(type(pipe))
    seed = pick_seed(job.seed)
    steps = _steps(job.steps, loaded)
    clip_skip = prompts.effective_clip_skip(job.clip_skip, loaded.spec.clip_skip)
    kwargs: dict[str, Any] = _defaults(loaded, sig)
    if "image" in image_kwargs and "mask_image" not in image_kwargs and sig.accepts("strength"):
        kwargs.setdefault("strength", DEFAULT_IMG2IMG_STRENGTH)
    kwargs.update(image_kwargs)
    kwargs.update(
        prompts.build_prompt_kwargs(pipe, job.prompt, job.negative_prompt,
                                    use_compel=settings.compel, clip_skip=clip_skip,
                                    clip_skip_enabled=settings.clip_skip_enabled)
    )
    kwargs.update(num_inference_steps=steps, width=width or None, height=height or None,
                  generator=make_generator(seed))
    if sig.accepts("callback_on_step_end"):
        kwargs["callback_on_step_end"] = cancel_callback(is_cancelled)
    call = _filter(kwargs, sig, _enabled(job.enable_parameters))
    if is_cancelled():
        raise Cancelled("request cancelled by the client before it started")
    result = pipe(**call)
    image = result.images[0]
    media.write_png_atomic(image, job.dst)
    parts = [f"image written to {job.dst}", f"seed={seed}", f"{image.width}x{image.height}",
             f"steps={steps}"]
    if note:
        parts.append(note)
    return "; ".join(parts)


def _typed_params(params: dict[str, str], sig: CallSignature, cls_name: str) -> dict[str, Any]:
    out = {}
    for key, raw in params.items():
        if not sig.accepts(key):
            raise InvalidArgument(
                f"params key {key!r} is not accepted by {cls_name}; accepted: "
                + ", ".join(sorted(sig.params))
            )
        out[key] = parse_option_value(raw)
    return out


def run_video(loaded: LoadedPipeline, job: VideoJob, settings: Settings,
              is_cancelled: IsCancelled) -> str:
    """Validate, run one video generation and write the MP4; return the reply message."""
    pipe = loaded.pipe
    sig = call_signature(type(pipe))
    if not sig.accepts("num_frames"):
        raise FailedPrecondition(
            f"the loaded model ({type(pipe).__name__}) makes images, not videos; load a video "
            "pipeline (e.g. WanPipeline, StableVideoDiffusionPipeline) for GenerateVideo"
        )
    check_steps(job.steps, settings)
    width, height, note = check_size(job.width, job.height, pipe, settings)
    frames = job.num_frames or settings.frames
    if frames < 0 or frames > 10_000:
        raise InvalidArgument(f"num_frames must be between 1 and 10000, got {job.num_frames}")
    fps = job.fps or settings.fps
    if fps < 0 or fps > 240:
        raise InvalidArgument(f"fps must be between 1 and 240, got {job.fps}")
    media.check_output_path(job.dst)
    kwargs: dict[str, Any] = _defaults(loaded, sig)
    if job.start_image:
        kwargs["image"] = media.open_image(job.start_image, field="start_image",
                                           max_pixels=settings.max_input_pixels)
    elif sig.required_image:
        raise InvalidArgument(f"{type(pipe).__name__} turns an image into a video: "
                              "send start_image")
    if job.end_image:
        if not sig.accepts("last_image"):
            raise InvalidArgument(f"{type(pipe).__name__} does not take an end_image")
        kwargs["last_image"] = media.open_image(job.end_image, field="end_image",
                                                max_pixels=settings.max_input_pixels)
    if sig.accepts("prompt"):
        kwargs.update(prompts.build_prompt_kwargs(pipe, job.prompt, job.negative_prompt,
                                                  use_compel=False, clip_skip=0))
    if job.cfg_scale > 0:
        kwargs["guidance_scale"] = job.cfg_scale
    seed = pick_seed(job.seed)
    kwargs.update(num_inference_steps=_steps(job.steps, loaded), num_frames=frames,
                  width=width or None, height=height or None, generator=make_generator(seed),
                  decode_chunk_size=settings.chunk_size)
    if sig.accepts("fps"):
        kwargs["fps"] = fps
    if sig.accepts("callback_on_step_end"):
        kwargs["callback_on_step_end"] = cancel_callback(is_cancelled)
    kwargs.update(_typed_params(job.params, sig, type(pipe).__name__))
    result = pipe(**_filter(kwargs, sig, None))
    video = result.frames[0]
    media.write_video_atomic(video, job.dst, fps)
    parts = [f"video written to {job.dst}", f"seed={seed}", f"frames={len(video)}",
             f"fps={fps}"]
    if note:
        parts.append(note)
    return "; ".join(parts)


def is_upscaler(pipe: Any) -> bool:
    return pipe is not None and "Upscale" in type(pipe).__name__


def run_upscale(loaded: LoadedPipeline | None, job: UpscaleJob, settings: Settings,
                is_cancelled: IsCancelled) -> str:
    """Upscale with the loaded upscaler pipeline, else a Lanczos resize by ``scale``."""
    if job.scale < 0:
        raise InvalidArgument(f"scale must be positive (or 0 for 2x), got {job.scale}")
    media.check_output_path(job.dst)
    image = media.open_image(job.src, field="src", max_pixels=settings.max_input_pixels)
    scale = job.scale or 2
    target = (image.width * scale, image.height * scale)
    if target[0] * target[1] > settings.max_pixels:
        raise InvalidArgument(
            f"upscaling {image.width}x{image.height} by {scale} gives {target[0]}x{target[1]}, "
            f"above the limit of {settings.max_pixels} pixels (DIFFUSERS_MAX_PIXELS)"
        )
    if loaded is None or not is_upscaler(loaded.pipe):
        result = media.lanczos_upscale(image, scale, max_pixels=settings.max_pixels)
        how = "lanczos"
    else:
        pipe = loaded.pipe
        sig = call_signature(type(pipe))
        kwargs: dict[str, Any] = {"prompt": "", "image": image,
                                  "num_inference_steps": _steps(0, loaded),
                                  "generator": make_generator(pick_seed(0))}
        kwargs.update(_defaults(loaded, sig))
        if sig.accepts("callback_on_step_end"):
            kwargs["callback_on_step_end"] = cancel_callback(is_cancelled)
        result = pipe(**_filter(kwargs, sig, None)).images[0]
        how = type(pipe).__name__
        if job.scale and result.size != target:
            from PIL import Image

            result = result.resize(target, Image.Resampling.LANCZOS)
    media.write_png_atomic(result, job.dst)
    return f"upscaled {image.width}x{image.height} to {result.width}x{result.height} ({how})"
