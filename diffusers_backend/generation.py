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
from .errors import Cancelled, InvalidArgument
from .jobs import ImageJob, UpscaleJob, VideoJob
from .loading.pipeline_loader import LoadedPipeline
from .loading.spec import parse_option_value
from .settings import Settings
from .video_defaults import video_defaults

log = logging.getLogger(__name__)

DEFAULT_STEPS = 25
DEFAULT_CFG = 7.0
DEFAULT_IMG2IMG_STRENGTH = 0.75
MAX_SEED = 2**31 - 1
# Request fields that EnableParameters may switch off (LocalAI semantics). The model's own
# settings (CFGScale, Options, and CLIP skip: the host copies the YAML's clip_skip into every
# request, and LocalAI's backend always applies it) are not filtered.
FILTERABLE = ("negative_prompt", "num_inference_steps")
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


def unaccepted_call_options(pipe: Any, options: dict[str, Any]) -> list[str]:
    """Call options that no call of this pipeline (or its img2img/inpaint variants) takes.

    LocalAI's backend hands every option to the pipeline call, which swallows what it does
    not know; we drop those at load time with a warning instead of passing them on.
    """
    accepted = set(call_signature(type(pipe)).params)
    for variant in _task_variant_classes(pipe):
        accepted |= call_signature(variant).params
    return sorted(k for k in options if k not in accepted)


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


def _allowed(enabled: set[str] | None, name: str) -> bool:
    """Whether EnableParameters lets the request field ``name`` through."""
    return enabled is None or name not in FILTERABLE or name in enabled


def _filter(kwargs: dict[str, Any], sig: CallSignature, enabled: set[str] | None) -> dict:
    out = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        if not _allowed(enabled, key):
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


def _size_kwargs(width: int, height: int) -> dict[str, int]:
    """The request's width/height where set; 0 leaves the option default or the model's."""
    return {k: v for k, v in (("width", width), ("height", height)) if v}


def _option_int(loaded: LoadedPipeline, key: str) -> int:
    """A whole-number call option (``width:768``), or 0; other types are left to the call."""
    value = loaded.spec.call_options.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _steps(job_steps: int, loaded: LoadedPipeline) -> int:
    return job_steps or int(loaded.spec.call_options.get("num_inference_steps", DEFAULT_STEPS))


@dataclass
class _ImageInputs:
    """The pipeline picked for a request and the images it gets."""

    pipe: Any
    kwargs: dict[str, Any]
    # Inpainting: the original picture and mask, pasted back outside the mask afterwards.
    original: Any = None
    mask: Any = None


def _select_image_pipeline(loaded: LoadedPipeline, variants: Any, job: ImageJob,
                           settings: Settings) -> _ImageInputs:
    """Pick txt2img / img2img / inpaint / ControlNet on the loaded weights; open the images.

    - ``src`` a JSON file (the host's inpainting endpoint): inpainting with its image and
      mask (``ref_images = [image, mask]`` as fallback), on the loaded pipeline when it is
      an inpainting one, else on its inpainting variant (``from_pipe``, same weights); with
      a ControlNet loaded that is the ControlNet inpainting pipeline.
    - a ControlNet pipeline: ``src`` (else ``ref_images[0]``) is the control image; a
      ControlNet img2img pipeline takes ``src`` as the picture and ``ref_images[0]`` (else
      ``src``) as the control image.
    - otherwise ``src`` (else ``ref_images[0]``) makes the request img2img.
    """
    pipe = loaded.pipe
    sig = call_signature(type(pipe))
    inpaint = media.load_inpaint_inputs(job.src, list(job.ref_images),
                                        max_pixels=settings.max_input_pixels)
    if inpaint is not None:
        image, mask = inpaint
        target = pipe if sig.accepts("mask_image") else variants.get("inpaint")
        kwargs = {"image": image, "mask_image": mask}
        if call_signature(type(target)).accepts("control_image"):
            kwargs["control_image"] = _inpaint_control_image(job, image, mask, settings)
        return _ImageInputs(target, kwargs, image, mask)
    source = job.src or (job.ref_images[0] if job.ref_images else "")
    if not source:
        if sig.required_image:
            raise InvalidArgument(
                f"the loaded {type(pipe).__name__} needs an input image: send src "
                "(or ref_images) with the request"
            )
        return _ImageInputs(pipe, {})
    field = "src" if job.src else "ref_images[0]"
    image = media.open_image(source, field=field, max_pixels=settings.max_input_pixels)
    if sig.accepts("control_image"):  # ControlNet img2img: picture + control image
        control = image
        if job.src and job.ref_images:
            control = media.open_image(job.ref_images[0], field="ref_images[0]",
                                       max_pixels=settings.max_input_pixels)
        return _ImageInputs(pipe, {"image": image, "control_image": control})
    if sig.accepts("image"):
        return _ImageInputs(pipe, {"image": image})
    return _ImageInputs(variants.get("img2img"), {"image": image})


def _inpaint_control_image(job: ImageJob, image: Any, mask: Any, settings: Settings) -> Any:
    """The control image of a ControlNet inpainting request.

    The host's inpainting endpoint sends only picture and mask, so by default the control
    image is the picture with the masked pixels set to -1: the conditioning inpainting
    ControlNets are trained on. A third reference (``ref_images[2]``) overrides it, for
    ControlNets of another kind (edges, depth...).
    """
    refs = [r for r in job.ref_images if r]
    if len(refs) >= 3:
        return media.open_image(refs[2], field="ref_images[2]",
                                max_pixels=settings.max_input_pixels)
    import numpy as np
    import torch

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    masked = np.asarray(mask.convert("L"), dtype=np.float32) > 127.5
    pixels[masked] = -1.0
    return torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy())


def _inpaint_size(width: int, height: int, image: Any, pipe: Any) -> tuple[int, int]:
    """Without a requested size, inpaint at the picture's own size (snapped down)."""
    if width and height:
        return width, height
    multiple = size_multiple(pipe)
    snap_w = max(multiple, image.width - image.width % multiple)
    snap_h = max(multiple, image.height - image.height % multiple)
    return width or snap_w, height or snap_h


def paste_outside_mask(result: Any, original: Any, mask: Any) -> Any:
    """Keep the original picture wherever the mask is black; blend along a soft edge.

    Diffusers' inpainting runs the whole picture through the VAE, which changes pixels the
    mask does not cover (a little for a real VAE; completely for a random one, and always
    for a 4-channel UNet that only blends latents). Compositing afterwards, with the mask
    as alpha (white = repainted), makes every pixel outside the mask the original pixel,
    exactly. Image and mask are resized (Lanczos / bilinear) to the result's size first
    when the request asked for another size.
    """
    import numpy as np
    from PIL import Image

    if original.size != result.size:
        original = original.resize(result.size, Image.Resampling.LANCZOS)
    if mask.size != result.size:
        mask = mask.resize(result.size, Image.Resampling.BILINEAR)
    alpha = np.asarray(mask.convert("L"), dtype=np.float32)[:, :, None] / 255.0
    base = np.asarray(original.convert("RGB"), dtype=np.float32)
    painted = np.asarray(result.convert("RGB"), dtype=np.float32)
    mixed = base * (1.0 - alpha) + painted * alpha
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), "RGB")


@dataclass
class PreparedImage:
    """One image request turned into a pipeline call, ready to run alone or in a batch."""

    job: ImageJob
    pipe: Any
    call: dict[str, Any]
    seed: int
    steps: int
    note: str
    inputs: _ImageInputs

    def batch_key(self) -> tuple | None:
        """Requests with equal keys can share one pipeline call; None: run alone.

        Only plain text-to-image calls batch: prompts, negative prompts and generators become
        per-item lists, so everything else in the call must be equal.
        """
        if self.inputs.kwargs or not isinstance(self.call.get("prompt"), str):
            return None
        if "num_images_per_prompt" in self.call:
            return None
        shared = sorted((k, repr(v)) for k, v in self.call.items()
                        if k not in _PER_ITEM_KEYS)
        return (id(self.pipe), "negative_prompt" in self.call, tuple(shared))


_PER_ITEM_KEYS = ("prompt", "negative_prompt", "generator")


def prepare_image(loaded: LoadedPipeline, variants: Any, job: ImageJob,
                  settings: Settings) -> PreparedImage:
    """Validate one image request and build its pipeline call (opening its input images).

    Precedence: the request's own values (steps, size, seed, CLIP skip) win over the
    model's load-time defaults (Options, Seed, CLIPSkip); CFGScale and the call options
    apply to every call. EnableParameters drops the request fields it does not list.
    """
    check_steps(job.steps, settings)
    width, height, note = check_size(job.width or _option_int(loaded, "width"),
                                     job.height or _option_int(loaded, "height"),
                                     loaded.pipe, settings)
    media.check_output_path(job.dst)
    inputs = _select_image_pipeline(loaded, variants, job, settings)
    pipe = inputs.pipe
    sig = call_signature(type(pipe))
    enabled = _enabled(job.enable_parameters)
    seed = pick_seed(job.seed)
    steps = _steps(job.steps if _allowed(enabled, "num_inference_steps") else 0, loaded)
    negative = job.negative_prompt if _allowed(enabled, "negative_prompt") else ""
    clip_skip = prompts.effective_clip_skip(job.clip_skip, loaded.spec.clip_skip)
    if inputs.original is not None:
        width, height = _inpaint_size(width, height, inputs.original, pipe)
    kwargs: dict[str, Any] = _defaults(loaded, sig)
    if inputs.original is None and "image" in inputs.kwargs and sig.accepts("strength"):
        kwargs.setdefault("strength", DEFAULT_IMG2IMG_STRENGTH)
        if width and height and not sig.accepts("width"):
            # img2img pipelines take their size from the picture: resize it to the request's.
            inputs.kwargs["image"] = _resized(inputs.kwargs["image"], width, height)
    kwargs.update(inputs.kwargs)
    kwargs.update(
        prompts.build_prompt_kwargs(pipe, job.prompt, negative,
                                    use_compel=settings.compel, clip_skip=clip_skip,
                                    clip_skip_enabled=settings.clip_skip_enabled)
    )
    kwargs.update(num_inference_steps=steps, generator=make_generator(seed))
    kwargs.update(_size_kwargs(width, height))
    call = _filter(kwargs, sig, enabled)
    strength = call.get("strength")
    if (isinstance(strength, (int, float)) and 0 < strength <= 1
            and int(call.get("num_inference_steps", 0) * strength) < 1):
        # img2img denoises only steps*strength steps; 0 would crash inside diffusers.
        steps = call["num_inference_steps"] = -int(-1 // strength)
        note = "; ".join(x for x in (note, f"steps raised to {steps} so that strength "
                                     f"{strength} runs at least one denoising step") if x)
    return PreparedImage(job, pipe, call, seed, steps, note, inputs)


def execute_images(batch: list[PreparedImage], is_cancelled: IsCancelled) -> list[Any]:
    """Run prepared requests (equal batch keys) as one pipeline call; one image each."""
    first = batch[0]
    call = dict(first.call)
    if len(batch) > 1:
        for key in _PER_ITEM_KEYS:
            if key in call:
                call[key] = [item.call[key] for item in batch]
    if call_signature(type(first.pipe)).accepts("callback_on_step_end"):
        call["callback_on_step_end"] = cancel_callback(is_cancelled)
    images = first.pipe(**call).images
    return list(images[: len(batch)])


def finish_image(prepared: PreparedImage, image: Any) -> str:
    """Write one generated image (inpainting: original pasted back outside the mask)."""
    inputs, job = prepared.inputs, prepared.job
    if inputs.original is not None:
        image = paste_outside_mask(image, inputs.original, inputs.mask)
    media.write_png_atomic(image, job.dst)
    parts = [f"image written to {job.dst}", f"seed={prepared.seed}",
             f"{image.width}x{image.height}", f"steps={prepared.steps}"]
    if inputs.original is not None:
        parts.append(f"inpainted with {type(prepared.pipe).__name__}")
    elif "image" in inputs.kwargs:
        parts.append(f"from the input image with {type(prepared.pipe).__name__}")
    if prepared.note:
        parts.append(prepared.note)
    return "; ".join(parts)


def run_image(loaded: LoadedPipeline, variants: Any, job: ImageJob, settings: Settings,
              is_cancelled: IsCancelled) -> str:
    """Validate, run one image generation on its own and write the PNG; return the reply."""
    prepared = prepare_image(loaded, variants, job, settings)
    if is_cancelled():
        raise Cancelled("request cancelled by the client before it started")
    return finish_image(prepared, execute_images([prepared], is_cancelled)[0])


def _resized(image: Any, width: int, height: int) -> Any:
    from PIL import Image

    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


# Video request fields validated on their own; ``params`` may not bypass those checks.
_VALIDATED_VIDEO_KEYS = frozenset({
    "num_frames", "width", "height", "num_inference_steps", "fps", "frame_rate", "image",
    "last_image",
    "generator", "callback_on_step_end", "output_type", "return_dict",
})


def _typed_params(params: dict[str, str], sig: CallSignature, cls_name: str) -> dict[str, Any]:
    out = {}
    for key, raw in params.items():
        if key in _VALIDATED_VIDEO_KEYS:
            raise InvalidArgument(
                f"params key {key!r} is set by the request's own fields (num_frames, width, "
                "height, step, fps, start_image, end_image), not through params"
            )
        if not sig.accepts(key):
            raise InvalidArgument(
                f"params key {key!r} is not accepted by {cls_name}; accepted: "
                + ", ".join(sorted(sig.params))
            )
        out[key] = parse_option_value(raw)
    return out


def _first_video(frames: Any) -> Any:
    """The first video of a pipeline result, as a list of PIL images or an (F, H, W, C) array.

    Pipelines return a list (per prompt) of PIL lists, a (B, F, H, W, C) numpy array, or
    with ``output_type: pt`` a (B, F, C, H, W) tensor.
    """
    video = frames[0]
    if hasattr(video, "detach"):  # a torch tensor
        video = video.detach().float().cpu().numpy()
        if video.ndim == 4 and video.shape[1] in (1, 3, 4) and video.shape[-1] not in (1, 3, 4):
            video = video.transpose(0, 2, 3, 1)
    return video


def makes_video(pipe: Any) -> bool:
    """Whether the loaded pipeline makes videos (its call takes ``num_frames``)."""
    return pipe is not None and call_signature(type(pipe)).accepts("num_frames")


def video_job_from_image(job: ImageJob) -> VideoJob:
    """A GenerateImage request for a video model (LocalAI's documented img2vid/txt2vid go
    through the image endpoint): ``src`` (else ``ref_images[0]``) is the start image and the
    video is written at ``dst``; frames, fps and guidance follow FRAMES/FPS and the model."""
    start = job.src or (job.ref_images[0] if job.ref_images else "")
    return VideoJob(prompt=job.prompt, negative_prompt=job.negative_prompt, start_image=start,
                    width=job.width, height=job.height, steps=job.steps, seed=job.seed,
                    dst=job.dst)


@dataclass(frozen=True)
class VideoPlan:
    """A video request's numbers after defaults: what is passed, what is written."""

    frames: int | None  # None: the pipeline chooses (SVD reads its UNet config)
    fps: int
    steps: int


def plan_video(loaded: LoadedPipeline, job: VideoJob, settings: Settings) -> VideoPlan:
    """Validate frames/fps/steps; fill zeros from FRAMES/FPS, then the pipeline's own."""
    pipe = loaded.pipe
    if not makes_video(pipe):
        raise InvalidArgument(
            f"the loaded model ({type(pipe).__name__}) makes images, not videos; load a video "
            "pipeline (e.g. WanPipeline, LTX2ImageToVideoPipeline, StableVideoDiffusionPipeline)"
            " for GenerateVideo"
        )
    check_steps(job.steps, settings)
    if job.num_frames < 0 or job.num_frames > 10_000:
        raise InvalidArgument(f"num_frames must be between 1 and 10000, got {job.num_frames}")
    if job.fps < 0 or job.fps > 240:
        raise InvalidArgument(f"fps must be between 1 and 240, got {job.fps}")
    own = video_defaults(type(pipe))
    steps = (job.steps or _option_int(loaded, "num_inference_steps") or own.steps
             or DEFAULT_STEPS)
    return VideoPlan(frames=job.num_frames or settings.frames or own.frames,
                     fps=job.fps or settings.fps or own.fps, steps=steps)


def run_video(loaded: LoadedPipeline, job: VideoJob, settings: Settings,
              is_cancelled: IsCancelled) -> str:
    """Validate, run one video generation and write the MP4; return the reply message."""
    pipe = loaded.pipe
    sig = call_signature(type(pipe))
    plan = plan_video(loaded, job, settings)
    width, height, note = check_size(job.width, job.height, pipe, settings)
    media.check_output_path(job.dst)
    kwargs: dict[str, Any] = _defaults(loaded, sig)
    if job.start_image:
        kwargs["image"] = media.open_image(job.start_image, field="start_image",
                                           max_pixels=settings.max_input_pixels)
    elif sig.required_image:
        raise InvalidArgument(f"{type(pipe).__name__} turns an image into a video: "
                              "send start_image (through GenerateImage: src)")
    if job.end_image:
        if not sig.accepts("last_image"):
            raise InvalidArgument(f"{type(pipe).__name__} does not take an end_image")
        kwargs["last_image"] = media.open_image(job.end_image, field="end_image",
                                                max_pixels=settings.max_input_pixels)
    if sig.accepts("prompt"):
        kwargs.update(prompts.build_prompt_kwargs(pipe, job.prompt, job.negative_prompt,
                                                  use_compel=False, clip_skip=0))
    if job.cfg_scale > 0:
        # SVD-style pipelines ramp guidance between a min and a max instead.
        key = "max_guidance_scale" if sig.accepts("max_guidance_scale") else "guidance_scale"
        kwargs[key] = job.cfg_scale
    seed = pick_seed(job.seed)
    kwargs.update(num_inference_steps=plan.steps, generator=make_generator(seed),
                  decode_chunk_size=settings.chunk_size)
    if plan.frames:
        kwargs["num_frames"] = plan.frames
    kwargs.update(_size_kwargs(width, height))
    # The rate the model is conditioned on and the rate written to the file agree.
    for key in ("fps", "frame_rate"):
        if sig.accepts(key):
            kwargs[key] = plan.fps
    if sig.accepts("callback_on_step_end"):
        kwargs["callback_on_step_end"] = cancel_callback(is_cancelled)
    kwargs.update(_typed_params(job.params, sig, type(pipe).__name__))
    result = pipe(**_filter(kwargs, sig, None))
    video = _first_video(result.frames)
    media.write_video_atomic(video, job.dst, plan.fps)
    parts = [f"video written to {job.dst}", f"seed={seed}", f"frames={len(video)}",
             f"fps={plan.fps}", f"steps={plan.steps}"]
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
