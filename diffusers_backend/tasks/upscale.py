"""UpscaleImage as a task: with an upscaler pipeline loaded it runs on the pipeline thread;
otherwise a Lanczos resize by ``scale`` needs no model and no queue.

An upscaler runs with its own defaults (the x4 upscaler: 75 steps, guidance 9), as LocalAI's
backend calls it, unless the model's options set them. Its factor is fixed (x4: 4, latent
upscaler: 2): ``scale`` 0 keeps that result, another ``scale`` resizes it to ``scale`` times
the input (Lanczos).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers_backend import media
from diffusers_backend.errors import InvalidArgument
from diffusers_backend.loading.pipeline_loader import LoadedPipeline
from diffusers_backend.settings import Settings
from diffusers_backend.tasks.call_header import CallHeader
from diffusers_backend.tasks.calls import IsCancelled, PictureOutput, pick_seed
from diffusers_backend.tasks.jobs import UpscaleJob


def is_upscaler(pipe: Any) -> bool:
    return pipe is not None and "Upscale" in type(pipe).__name__


@dataclass(frozen=True)
class UpscaleOutput(PictureOutput):
    """The upscaled picture, and the steps and guidance the upscaler ran with (empty for
    Lanczos), for the reply."""

    image: Any
    ran: str = ""


@dataclass(eq=False)
class UpscalePlan:
    """One validated upscale request: the decoded picture and the target size. Not changed
    after validation: what the call ran with comes back in :class:`UpscaleOutput`."""

    job: UpscaleJob
    loaded: LoadedPipeline | None
    settings: Settings
    image: Any
    scale: int

    pixels = 0  # never batched

    @property
    def target(self) -> tuple[int, int]:
        return self.image.width * self.scale, self.image.height * self.scale

    def batch_key(self) -> None:
        return None

    def replan(self, loaded: LoadedPipeline) -> UpscalePlan:
        return plan_upscale(loaded, self.job, self.settings)

    @staticmethod
    def run(batch: list[UpscalePlan], variants: Any, is_cancelled: IsCancelled) -> list[Any]:
        """The loaded upscaler on the one plan of ``batch`` (Lanczos without one)."""
        (plan,) = batch
        if plan.loaded is None or not is_upscaler(plan.loaded.pipe):
            return [UpscaleOutput(media.lanczos_upscale(plan.image, plan.scale,
                                                        max_pixels=plan.settings.max_pixels))]
        pipe = plan.loaded.pipe
        head = CallHeader.of(pipe)
        kwargs: dict[str, Any] = {"prompt": "", "image": plan.image,
                                  **head.noise(pick_seed(0))}
        # The options as they are (no cfg default): else the pipeline's own defaults.
        kwargs.update(plan.loaded.spec.call_options)
        call = head.finish(kwargs, is_cancelled)
        result = pipe(**call).images[0]
        ran = _what_ran(pipe, call)
        if plan.job.scale and result.size != plan.target:
            from PIL import Image

            result = result.resize(plan.target, Image.Resampling.LANCZOS)
        return [UpscaleOutput(result, ran)]

    def write(self, output: UpscaleOutput) -> str:
        result = output.image
        media.write_png_atomic(result, self.job.dst,
                               compress_level=self.settings.png_compression)
        how = "lanczos" if self.loaded is None or not is_upscaler(self.loaded.pipe) \
            else type(self.loaded.pipe).__name__
        ran = f", {output.ran}" if output.ran else ""
        return (f"upscaled {self.image.width}x{self.image.height} to "
                f"{result.width}x{result.height} ({how}{ran})")


def _what_ran(pipe: Any, call: dict[str, Any]) -> str:
    """The steps the scheduler really ran and the guidance used (the call's, else the
    default of the pipeline's ``__call__``)."""
    import inspect

    timesteps = getattr(getattr(pipe, "scheduler", None), "timesteps", None)
    steps = len(timesteps) if timesteps is not None else 0
    guidance = call.get("guidance_scale")
    if guidance is None:
        parameter = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
        guidance = parameter.default if parameter is not None else None
    parts = [f"{steps} steps"] if steps else []
    if isinstance(guidance, (int, float)):
        parts.append(f"guidance {float(guidance)}")
    return ", ".join(parts)


def plan_upscale(loaded: LoadedPipeline | None, job: UpscaleJob,
                 settings: Settings) -> UpscalePlan:
    """Validate an upscale request and decode its picture (refused at once when too big)."""
    if job.scale < 0:
        raise InvalidArgument(f"scale must be positive (or 0 for 2x), got {job.scale}")
    media.check_output_path(job.dst)
    image = media.open_image(job.src, field="src", max_pixels=settings.max_input_pixels)
    plan = UpscalePlan(job=job, loaded=loaded, settings=settings, image=image,
                       scale=job.scale or 2)
    width, height = plan.target
    if width * height > settings.max_pixels:
        raise InvalidArgument(
            f"upscaling {image.width}x{image.height} by {plan.scale} gives {width}x{height}, "
            f"above the limit of {settings.max_pixels} pixels (DIFFUSERS_MAX_PIXELS)"
        )
    return plan
