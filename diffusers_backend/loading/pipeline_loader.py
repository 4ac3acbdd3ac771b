"""LoadModel's work, as stages: resolve, guard, load, adapt, place, accelerate, describe.

Each stage is a function with one job, in its own module where it is more than a few lines:
:mod:`load_plan` resolves what the spec names into a frozen plan, :mod:`load_guard` checks
every path of it before anything is read, :mod:`load_weights` loads the weights through the
family's loader, :mod:`adapt` puts scheduler, task variant and adapters on top; placement,
acceleration and the description are here. Any failure becomes a :class:`LoadError` (or a
guard's status) naming what failed; the caller keeps the previous model when that happens.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from diffusers_backend.loading import acceleration, load_guard, load_plan, load_weights, placement
from diffusers_backend.loading.adapt import Adapted, adapt
from diffusers_backend.loading.load_plan import LoadPlan, resolve_class
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings

__all__ = ["LoadedPipeline", "find_class", "load_pipeline", "resolve_class"]

log = logging.getLogger(__name__)


@dataclass
class LoadedPipeline:
    """A pipeline ready to serve, with what the runtime needs to know about it."""

    pipe: Any
    spec: LoadSpec
    device: str
    dtype_name: str
    load_seconds: float = 0.0
    description: str = ""
    # What was tolerated rather than refused (LocalAI's backend loads these too): shown in
    # LoadModel's reply and the log.
    warnings: list[str] = field(default_factory=list)
    # The ``Model`` LoadModel received, which requests name as ``ModelIdentity`` (a link
    # stays the link after it was downloaded to a file).
    identity: str = ""
    # The AutoencoderTiny live previews are decoded with (``preview_decoder``), or None.
    preview_decoder: Any = None

    @property
    def class_name(self) -> str:
        return type(self.pipe).__name__


def _denoiser_dtype_name(pipe: Any, asked: str) -> str:
    """The dtype the model really computes in (a special loader may choose another one)."""
    for name in ("transformer", "unet", "prior"):
        dtype = getattr(getattr(pipe, name, None), "dtype", None)
        if dtype is not None:
            return str(dtype).removeprefix("torch.")
    return asked


def _place(pipe: Any, plan: LoadPlan, spec: LoadSpec) -> str:
    """Memory modes and device; CPU threads set only now, once the weights have loaded (a
    failed load leaves the process as it was)."""
    if spec.threads > 0:
        import torch

        torch.set_num_threads(spec.threads)
    return placement.apply_memory_modes(pipe, spec, plan.settings, plan.device)


def _accelerate(pipe: Any, spec: LoadSpec) -> list[str]:
    """The speed options (compile, caches, quantization) and their warm-up, as notes."""
    notes = acceleration.apply_speed_options(pipe, spec)
    if notes:
        warmed = acceleration.warm_up(pipe, spec)
        if warmed:
            notes = [*notes, f"warmed up in {warmed:.1f}s"]
    return notes


def _describe(pipe: Any, spec: LoadSpec, description: str) -> str:
    """The ``loaded ...`` log line's details: scheduler installed, CPU threads."""
    scheduler = getattr(pipe, "scheduler", None)
    if spec.scheduler_type and scheduler is not None:
        karras = bool(getattr(scheduler.config, "use_karras_sigmas", False))
        description += (f", scheduler {spec.scheduler_type} = {type(scheduler).__name__}"
                        + (" (karras)" if karras else ""))
    if spec.threads > 0:
        import torch

        description += f", {torch.get_num_threads()} CPU threads"
    return description


def _loaded(plan: LoadPlan, done: Adapted, description: str,
            started: float) -> LoadedPipeline:
    """The served pipeline, described."""
    pipe, spec = done.pipe, done.spec
    description = _describe(pipe, spec, description)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    elapsed = time.perf_counter() - started
    log.info("loaded %s in %.2fs (%s)", type(pipe).__name__, elapsed, description)
    dtype_name = _denoiser_dtype_name(pipe, spec.torch_dtype_name())
    warnings = done.warnings + spec.dtype_warnings(dtype_name)
    return LoadedPipeline(pipe=pipe, spec=spec, device=plan.device, dtype_name=dtype_name,
                          load_seconds=elapsed, description=description, warnings=warnings,
                          identity=plan.identity, preview_decoder=done.preview_decoder)


def load_pipeline(spec: LoadSpec, settings: Settings) -> LoadedPipeline:
    """Load everything LoadModel asked for; raise LoadError naming the failing part."""
    started = time.perf_counter()
    spec.validate()
    plan = load_plan.resolve(spec, settings)  # names -> paths, URL, device, dtype
    load_guard.guard(plan)  # every path and policy, before anything is read
    plan = load_plan.classify(plan)  # the class, read from the guarded model
    kwargs = load_weights.load_kwargs(plan)
    log.info("loading %s as %s (%s, %s)", plan.ref.location, plan.pipeline_class.__name__,
             plan.device, plan.spec.torch_dtype_name())
    done = adapt(load_weights.load(plan, kwargs), plan, kwargs)
    description = ", ".join([_place(done.pipe, plan, done.spec), *done.notes,
                             *_accelerate(done.pipe, done.spec)])
    return _loaded(plan, done, description, started)


def find_class(spec: LoadSpec, settings: Settings) -> tuple[LoadSpec, type]:
    """The spec (a URL model fetched once) and the pipeline class LoadModel would load, before
    any weights are read (engine/parallel/ picks its mode from the class)."""
    plan = load_plan.resolve(spec, settings)
    load_guard.guard(plan)
    plan = load_plan.classify(plan)
    return plan.spec, plan.pipeline_class
