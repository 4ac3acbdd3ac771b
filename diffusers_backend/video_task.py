"""GenerateVideo (and GenerateImage on a video model) as a task: validated in the request's
thread, run on the pipeline thread, the MP4 written by an output writer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import media, prompts
from .calls import (
    DEFAULT_STEPS,
    CallSignature,
    IsCancelled,
    accepted_kwargs,
    call_signature,
    cancel_callback,
    check_size,
    check_steps,
    make_generator,
    model_defaults,
    option_int,
    pick_seed,
    size_kwargs,
)
from .errors import InvalidArgument
from .jobs import ImageJob, VideoJob
from .loading.pipeline_loader import LoadedPipeline
from .loading.spec import parse_option_value
from .settings import Settings
from .video_defaults import video_defaults

# Video request fields validated on their own; ``params`` may not bypass those checks.
_VALIDATED_VIDEO_KEYS = frozenset({
    "num_frames", "width", "height", "num_inference_steps", "fps", "frame_rate", "image",
    "last_image", "generator", "callback_on_step_end", "output_type", "return_dict",
})


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
    start: Any = None
    end: Any = None

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
        sig = call_signature(type(pipe))
        kwargs: dict[str, Any] = model_defaults(plan.loaded, sig)
        if plan.start is not None:
            kwargs["image"] = plan.start
        if plan.end is not None:
            kwargs["last_image"] = plan.end
        job = plan.job
        if sig.accepts("prompt"):
            kwargs.update(prompts.build_prompt_kwargs(pipe, job.prompt, job.negative_prompt,
                                                      use_compel=False, clip_skip=0))
        if job.cfg_scale > 0:
            # SVD-style pipelines ramp guidance between a min and a max instead.
            key = "max_guidance_scale" if sig.accepts("max_guidance_scale") else "guidance_scale"
            kwargs[key] = job.cfg_scale
        kwargs.update(num_inference_steps=plan.steps, generator=make_generator(plan.seed),
                      decode_chunk_size=plan.settings.chunk_size)
        if plan.frames:
            kwargs["num_frames"] = plan.frames
        kwargs.update(size_kwargs(plan.width, plan.height))
        # The rate the model is conditioned on and the rate written to the file agree.
        for key in ("fps", "frame_rate"):
            if sig.accepts(key):
                kwargs[key] = plan.fps
        if sig.accepts("callback_on_step_end"):
            kwargs["callback_on_step_end"] = cancel_callback(is_cancelled)
        kwargs.update(plan.params)
        result = pipe(**accepted_kwargs(kwargs, sig, None))
        return [_first_video(result.frames)]

    def write(self, video: Any) -> str:
        media.write_video_atomic(video, self.job.dst, self.fps)
        parts = [f"video written to {self.job.dst}", f"seed={self.seed}",
                 f"frames={len(video)}", f"fps={self.fps}", f"steps={self.steps}"]
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
    if job.num_frames < 0 or job.num_frames > 10_000:
        raise InvalidArgument(f"num_frames must be between 1 and 10000, got {job.num_frames}")
    if job.fps < 0 or job.fps > 240:
        raise InvalidArgument(f"fps must be between 1 and 240, got {job.fps}")
    width, height, note = check_size(job.width, job.height, pipe, settings)
    media.check_output_path(job.dst)
    params = _typed_params(job.params, sig, type(pipe).__name__)
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
    own = video_defaults(type(pipe))
    steps = (job.steps or option_int(loaded, "num_inference_steps") or own.steps
             or DEFAULT_STEPS)
    return VideoPlan(job=job, loaded=loaded, settings=settings,
                     frames=job.num_frames or settings.frames or own.frames,
                     fps=job.fps or settings.fps or own.fps, steps=steps,
                     seed=pick_seed(job.seed), width=width, height=height, note=note,
                     params=params, start=start, end=end)


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
