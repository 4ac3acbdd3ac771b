"""GenerateVideo (and GenerateImage on a video model) as a task: validated in the request's
thread, run on the pipeline thread, the MP4 written by an output writer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from diffusers_backend import media, prompts
from diffusers_backend.errors import InvalidArgument
from diffusers_backend.loading.pipeline_loader import LoadedPipeline
from diffusers_backend.registry.signatures import CallSignature, call_signature
from diffusers_backend.settings import Settings
from diffusers_backend.tasks.call_header import CallHeader
from diffusers_backend.tasks.calls import (
    DEFAULT_STEPS,
    IsCancelled,
    check_size,
    check_steps,
    option_int,
    pick_seed,
    size_multiple,
)
from diffusers_backend.tasks.jobs import ImageJob, VideoJob
from diffusers_backend.tasks.lora_call import NO_LORAS, LoraSet, applied, plan_loras
from diffusers_backend.tasks.video_defaults import video_defaults
from diffusers_backend.tasks.video_params import video_params

# LocalAI's GenerateVideo uses guidance 4.0 when the request sends cfg_scale 0 (what its
# /video endpoint sends when the user gives none).
DEFAULT_VIDEO_GUIDANCE = 4.0


def makes_video(pipe: Any) -> bool:
    """Whether the loaded pipeline makes videos (its call takes ``num_frames``)."""
    return pipe is not None and call_signature(type(pipe)).accepts("num_frames")


def video_job_from_image(job: ImageJob) -> VideoJob:
    """A GenerateImage request for a video model (LocalAI's documented img2vid/txt2vid go
    through the image endpoint): ``ref_images[0]`` (else ``src``) is the start image and the
    video is written at ``dst``; frames, fps and guidance follow FRAMES/FPS and the model."""
    start = (job.ref_images[0] if job.ref_images else "") or job.src
    return VideoJob(prompt=job.prompt, negative_prompt=job.negative_prompt, start_image=start,
                    width=job.width, height=job.height, steps=job.steps, seed=job.seed,
                    dst=job.dst)


@dataclass(frozen=True)
class VideoOutput:
    """What one video call made: its frames, and the audio track of audio-video pipelines
    (LTX-2) with its sample rate."""

    frames: Any
    audio: Any = None
    sample_rate: int = 0

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(eq=False)
class VideoPlan:
    """One validated video request: its numbers after defaults, and its decoded images."""

    job: VideoJob
    loaded: LoadedPipeline
    settings: Settings
    frames: int | None  # None: the pipeline chooses (SVD reads its UNet config)
    fps: int
    steps: int
    seed: int
    width: int
    height: int
    note: str
    params: dict[str, Any]
    guidance: float | None  # None: the pipeline's own (it has no guidance_scale)
    start: Any = None
    end: Any = None
    prompt: str | None = None  # the prompt without its LoRA tags (None: the job's)
    loras: LoraSet = NO_LORAS  # the prompt's <lora:...> tags, on for this plan's call only

    pixels = 0  # never batched

    def batch_key(self) -> None:
        return None

    def replan(self, loaded: LoadedPipeline) -> VideoPlan:
        return plan_video(loaded, self.job, self.settings)

    @staticmethod
    def run(batch: list[VideoPlan], variants: Any, is_cancelled: IsCancelled) -> list[Any]:
        """Run the one plan of ``batch``; its video as PIL frames or an (F, H, W, C) array."""
        (plan,) = batch
        pipe = plan.loaded.pipe
        head = CallHeader.of(pipe)
        sig = head.sig
        kwargs: dict[str, Any] = head.defaults(plan.loaded)
        if plan.start is not None:
            kwargs["image"] = plan.start
        if plan.end is not None:
            kwargs["last_image"] = plan.end
        job = plan.job
        if sig.accepts("prompt"):
            prompt = job.prompt if plan.prompt is None else plan.prompt
            kwargs.update(prompts.build_prompt_kwargs(pipe, prompt, job.negative_prompt,
                                                      use_compel=False, clip_skip=0))
        if plan.guidance is not None:
            # SVD-style pipelines ramp guidance between a min and a max instead.
            key = "max_guidance_scale" if sig.accepts("max_guidance_scale") else "guidance_scale"
            kwargs[key] = plan.guidance
        kwargs.update(head.noise(plan.seed, plan.steps, plan.width, plan.height),
                      decode_chunk_size=plan.settings.chunk_size)
        if plan.frames:
            kwargs["num_frames"] = plan.frames
        # The rate the model is conditioned on and the rate written to the file agree.
        for key in ("fps", "frame_rate"):
            if sig.accepts(key):
                kwargs[key] = plan.fps
        kwargs.update(plan.params)  # (never the steps, generator, size or callback)
        with applied(plan.loaded, plan.loras, plan.settings.safetensors_only):
            result = pipe(**head.finish(kwargs, is_cancelled))
        audio = getattr(result, "audio", None)
        if audio is not None and len(audio):
            audio = audio[0]  # one prompt: its waveform, (channels, samples)
            return [VideoOutput(_first_video(result.frames), audio, audio_sample_rate(pipe))]
        return [VideoOutput(_first_video(result.frames))]

    def write(self, video: Any) -> str:
        if not isinstance(video, VideoOutput):
            video = VideoOutput(video)
        has_audio = video.audio is not None and video.sample_rate > 0
        media.write_video_atomic(video.frames, self.job.dst, self.fps,
                                 audio=video.audio if has_audio else None,
                                 sample_rate=video.sample_rate)
        parts = [f"video written to {self.job.dst}", f"seed={self.seed}",
                 f"frames={len(video)}", f"fps={self.fps}", f"steps={self.steps}"]
        if has_audio:
            parts.append(f"audio {video.sample_rate} Hz")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


def plan_video(loaded: LoadedPipeline, job: VideoJob, settings: Settings) -> VideoPlan:
    """Validate a video request; fill zeros from FRAMES/FPS, then the pipeline's own."""
    pipe = loaded.pipe
    if not makes_video(pipe):
        raise InvalidArgument(
            f"the loaded model ({type(pipe).__name__}) makes images, not videos; load a video "
            "pipeline (e.g. WanPipeline, LTX2ImageToVideoPipeline, StableVideoDiffusionPipeline)"
            " for GenerateVideo"
        )
    sig = call_signature(type(pipe))
    check_steps(job.steps, settings)
    if not math.isfinite(job.cfg_scale) or job.cfg_scale < 0:
        raise InvalidArgument(f"cfg_scale must be a finite number, 0 or more, got {job.cfg_scale}")
    if job.num_frames < 0 or job.num_frames > 10_000:
        raise InvalidArgument(f"num_frames must be between 1 and 10000, got {job.num_frames}")
    if job.fps < 0 or job.fps > 240:
        raise InvalidArgument(f"fps must be between 1 and 240, got {job.fps}")
    width, height, note = check_size(job.width, job.height, pipe, settings)
    media.check_output_path(job.dst)
    params = video_params(job.params, pipe)
    note = "; ".join(x for x in (note, *params.ignored) if x)
    limit = settings.max_input_pixels
    start = end = None
    if job.start_image:
        start = media.open_image(job.start_image, field="start_image", max_pixels=limit)
    elif sig.required_image:
        raise InvalidArgument(f"{type(pipe).__name__} turns an image into a video: "
                              "send start_image (through GenerateImage: src)")
    if job.end_image:
        if not sig.accepts("last_image"):
            raise InvalidArgument(f"{type(pipe).__name__} does not take an end_image")
        end = media.open_image(job.end_image, field="end_image", max_pixels=limit)
    multiple = video_size_multiple(pipe)
    if start is not None and sig.accepts("width") and sig.accepts("height"):
        width, height, note = _start_image_size(start, width, height, loaded, sig, multiple)
        start = _resized(start, width, height)
    elif multiple > size_multiple(pipe):
        width, height, note = _snap(width, height, multiple, note)
    own = video_defaults(pipe.__class__)
    steps = (job.steps or option_int(loaded, "num_inference_steps") or own.steps
             or DEFAULT_STEPS)
    frames = job.num_frames or option_int(loaded, "num_frames") or settings.frames or own.frames
    fps = (job.fps or option_int(loaded, "fps") or option_int(loaded, "frame_rate")
           or settings.fps or own.fps)
    prompt, loras = plan_loras(loaded, job.prompt, job.negative_prompt, settings.safetensors_only)
    return VideoPlan(job=job, loaded=loaded, settings=settings, frames=frames, fps=fps,
                     steps=steps, seed=pick_seed(job.seed), width=width, height=height,
                     note=note, params=params.values, guidance=_guidance(job, loaded, sig),
                     start=start, end=end, prompt=prompt, loras=loras)


def _guidance(job: VideoJob, loaded: LoadedPipeline, sig: CallSignature) -> float | None:
    """The request's cfg_scale; else the YAML's (``guidance_scale``/``cfg_scale`` option,
    then ``cfg_scale``); else LocalAI's 4.0. Pipelines that ramp guidance
    (``max_guidance_scale``, SVD) keep their own unless the request or YAML sets one."""
    if job.cfg_scale > 0:
        return job.cfg_scale
    option = loaded.spec.call_options.get("guidance_scale")
    if isinstance(option, (int, float)) and not isinstance(option, bool) and option > 0:
        return float(option)
    if loaded.spec.cfg_scale > 0:
        return loaded.spec.cfg_scale
    if sig.accepts("guidance_scale"):
        return DEFAULT_VIDEO_GUIDANCE
    return None


def audio_sample_rate(pipe: Any) -> int:
    """The sample rate of the waveform an audio-video pipeline returns.

    LTX-2's audio comes out of its vocoder, whose config names the rate it writes
    (``output_sampling_rate``: 24 kHz for LTX-2, 48 kHz for LTX-2.3's upsampling vocoder);
    the pipeline's ``audio_sampling_rate`` (the audio VAE's mel rate) is the fallback.
    """
    vocoder = getattr(getattr(pipe, "vocoder", None), "config", None)
    for value in (getattr(vocoder, "output_sampling_rate", None),
                  getattr(vocoder, "sampling_rate", None),
                  getattr(pipe, "audio_sampling_rate", None)):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return int(value)
    return 0


def video_size_multiple(pipe: Any) -> int:
    """The multiple a video pipeline's width/height must be: the image rule, or the video
    VAE's spatial compression times the transformer's patch; LTX and LTX-2 check for 32
    whatever their VAE (``check_inputs``)."""
    ratio = int(getattr(pipe, "vae_spatial_compression_ratio", 0) or 0)
    patch = int(getattr(pipe, "transformer_spatial_patch_size", 1) or 1)
    ltx = 32 if type(pipe).__name__.startswith("LTX") else 0
    return max(size_multiple(pipe), ratio * patch, ltx)


def _snap(width: int, height: int, multiple: int, note: str) -> tuple[int, int, str]:
    snapped = [max(multiple, v - v % multiple) if v else 0 for v in (width, height)]
    if (snapped[0], snapped[1]) != (width, height):
        note = "; ".join(x for x in (note, f"size snapped from {width}x{height} to "
                                     f"{snapped[0]}x{snapped[1]} (a multiple of {multiple})")
                         if x)
    return snapped[0], snapped[1], note


def _start_image_size(start: Any, width: int, height: int, loaded: LoadedPipeline,
                      sig: CallSignature, multiple: int) -> tuple[int, int, str]:
    """The output size of an image-to-video request: the start image's aspect ratio at the
    requested area (width x height, else the pipeline's default size), in whole multiples.

    Image-to-video pipelines resize the start image to width x height, squashing any other
    shape; keeping its aspect ratio instead is what users expect from a photo.
    """
    default_w, default_h = _default_size(loaded, sig)
    area_w, area_h = width or default_w, height or default_h
    if not (area_w and area_h):
        return width, height, ""
    aspect = start.width / start.height
    new_w = max(multiple, int(round(math.sqrt(area_w * area_h * aspect) / multiple)) * multiple)
    new_h = max(multiple, int(round(math.sqrt(area_w * area_h / aspect) / multiple)) * multiple)
    note = ""
    if (new_w, new_h) != (area_w, area_h):
        asked = f"{width}x{height}" if width and height else f"default {area_w}x{area_h}"
        note = (f"size {new_w}x{new_h} keeps the start image's aspect ratio "
                f"({start.width}x{start.height}) at the area of {asked} "
                f"(a multiple of {multiple})")
    return new_w, new_h, note


def _default_size(loaded: LoadedPipeline, sig: CallSignature) -> tuple[int, int]:
    """The width/height a call would use when the request sets none: the model's options,
    else the defaults of the pipeline's call, else its sample size."""
    import inspect

    params = inspect.signature(type(loaded.pipe).__call__).parameters
    sizes = []
    for key in ("width", "height"):
        value = option_int(loaded, key)
        if not value:
            default = params[key].default if key in params else None
            value = default if isinstance(default, int) and not isinstance(default, bool) else 0
        sizes.append(value)
    if not all(sizes):
        sample = getattr(getattr(getattr(loaded.pipe, "unet", None), "config", None),
                         "sample_size", 0)
        factor = int(getattr(loaded.pipe, "vae_scale_factor", 8) or 8)
        if isinstance(sample, int) and sample > 0:
            sizes = [v or sample * factor for v in sizes]
    return sizes[0], sizes[1]


def _resized(image: Any, width: int, height: int) -> Any:
    from PIL import Image

    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


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
