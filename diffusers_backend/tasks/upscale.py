"""UpscaleImage as a task: with an upscaler pipeline loaded it runs on the pipeline thread;
otherwise a Lanczos resize by ``scale`` needs no model and no queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers_backend import media
from diffusers_backend.errors import InvalidArgument
from diffusers_backend.loading.pipeline_loader import LoadedPipeline
from diffusers_backend.registry.signatures import call_signature
from diffusers_backend.settings import Settings
from diffusers_backend.tasks.calls import (
    IsCancelled,
    accepted_kwargs,
    cancel_callback,
    make_generator,
    model_defaults,
    pick_seed,
    steps_or_default,
)
from diffusers_backend.tasks.jobs import UpscaleJob


def is_upscaler(pipe: Any) -> bool:
    return pipe is not None and "Upscale" in type(pipe).__name__


@dataclass(eq=False)
class UpscalePlan:
    """One validated upscale request: the decoded picture and the target size."""

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
            return [media.lanczos_upscale(plan.image, plan.scale,
                                          max_pixels=plan.settings.max_pixels)]
        pipe = plan.loaded.pipe
        sig = call_signature(type(pipe))
        kwargs: dict[str, Any] = {"prompt": "", "image": plan.image,
                                  "num_inference_steps": steps_or_default(0, plan.loaded),
                                  "generator": make_generator(pick_seed(0))}
        kwargs.update(model_defaults(plan.loaded, sig))
        if sig.accepts("callback_on_step_end"):
            kwargs["callback_on_step_end"] = cancel_callback(is_cancelled)
        result = pipe(**accepted_kwargs(kwargs, sig, None)).images[0]
        if plan.job.scale and result.size != plan.target:
            from PIL import Image

            result = result.resize(plan.target, Image.Resampling.LANCZOS)
        return [result]

    def write(self, result: Any) -> str:
        media.write_png_atomic(result, self.job.dst,
                               compress_level=self.settings.png_compression)
        how = "lanczos" if self.loaded is None or not is_upscaler(self.loaded.pipe) \
            else type(self.loaded.pipe).__name__
        return (f"upscaled {self.image.width}x{self.image.height} to "
                f"{result.width}x{result.height} ({how})")


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
