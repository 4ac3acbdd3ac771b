"""The loaded model and everything that touches it: state, locking, variants, Free.

Pipeline calls run on one worker thread (``work_queue``), under one lock: a diffusers
pipeline keeps per-call state in its scheduler, so two calls on one pipeline would race.
Loading happens outside that lock and swaps the new model in under it, so a failed load
keeps the old model serving and a load never frees weights under a running generation.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from .errors import (
    FailedPrecondition,
    InvalidArgument,
    LoadError,
    NotFound,
    Unavailable,
    is_out_of_memory,
)
from .jobs import ImageJob, UpscaleJob, VideoJob
from .loading.spec import LoadSpec
from .settings import Settings
from .work_queue import PipelineWorker, Ticket

if TYPE_CHECKING:
    from .loading.pipeline_loader import LoadedPipeline

log = logging.getLogger(__name__)
IMPORT_TIMEOUT_S = 600.0
IsCancelled = Callable[[], bool]


class State(IntEnum):
    """Mirrors ``StatusResponse.State`` on the wire."""

    ERROR = -1
    UNINITIALIZED = 0
    BUSY = 1
    READY = 2


class Variants:
    """img2img / inpainting pipelines made on the loaded weights with ``from_pipe``.

    ``from_pipe`` shares every component, so a variant costs no second copy of the model.
    """

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._made: dict[str, Any] = {}

    def get(self, task: str) -> Any:
        if task not in self._made:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = {"img2img": AutoPipelineForImage2Image,
                    "inpaint": AutoPipelineForInpainting}[task]
            try:
                variant = auto.from_pipe(self._pipe)
            except ValueError:
                raise InvalidArgument(
                    f"the loaded {type(self._pipe).__name__} has no {task} variant in diffusers;"
                    f" load an {task} pipeline_type for this request"
                ) from None
            if hasattr(variant, "set_progress_bar_config"):
                variant.set_progress_bar_config(disable=True)
            self._made[task] = variant
        return self._made[task]


def release_memory() -> None:
    """Collect garbage and return cached device memory to the driver."""
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        xpu.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def _drop_unaccepted_options(loaded: LoadedPipeline, unknown: list[str]) -> None:
    """Serve without the options no call of the pipeline takes, with a warning naming them."""
    if not unknown:
        return
    options = dict(loaded.spec.options)
    for key in unknown:
        # ``cfg_scale`` reaches the call as ``guidance_scale``: name it as the user wrote it.
        written = "cfg_scale" if key == "guidance_scale" and key not in options else key
        options.pop(written, None)
        loaded.warnings.append(
            f"option {written!r} ignored: {loaded.class_name} does not take it")
    loaded.spec = replace(loaded.spec, options=options)


class ModelRuntime:
    """Holds at most one loaded model and runs requests on it one at a time."""

    def __init__(self, settings: Settings, imports_ready: threading.Event | None = None):
        self.settings = settings
        self._imports_ready = imports_ready
        self._pipe_lock = threading.Lock()  # held for every pipeline call and for swaps
        self._load_lock = threading.Lock()  # one LoadModel at a time
        self._state_lock = threading.Lock()
        self._loaded: LoadedPipeline | None = None
        self._variants: Variants | None = None
        self._busy = 0
        self._last_load_failed = False
        self._closing = False
        self._worker = PipelineWorker(settings, self._pipe_lock, self._snapshot,
                                      self._release_memory)

    def _snapshot(self) -> tuple[LoadedPipeline | None, Variants | None]:
        return self._loaded, self._variants

    # -- state -------------------------------------------------------------
    @property
    def state(self) -> State:
        with self._state_lock:
            if self._busy:
                return State.BUSY
            if self._loaded is not None:
                return State.READY
            return State.ERROR if self._last_load_failed else State.UNINITIALIZED

    @property
    def model_name(self) -> str:
        loaded = self._loaded
        return loaded.spec.model if loaded is not None else ""

    def _release_memory(self) -> None:
        """release_memory, but never while torch is still being imported in the background
        (touching a half-imported torch raises AttributeError)."""
        if self._imports_ready is None or self._imports_ready.is_set():
            release_memory()
        else:
            gc.collect()

    def close(self) -> None:
        """Refuse new work (shutdown); running work finishes."""
        self._closing = True

    def _wait_for_imports(self) -> None:
        if self._imports_ready is not None and not self._imports_ready.wait(IMPORT_TIMEOUT_S):
            raise Unavailable("the backend is still importing torch/diffusers; retry shortly")

    # -- LoadModel / Free ---------------------------------------------------
    def load(self, spec: LoadSpec) -> LoadedPipeline:
        """Load a model and swap it in; on failure the previous model stays loaded."""
        self._wait_for_imports()
        from . import generation
        from .loading.pipeline_loader import load_pipeline

        with self._load_lock:
            try:
                loaded = load_pipeline(spec, self.settings)
                _drop_unaccepted_options(loaded, generation.unaccepted_call_options(
                    loaded.pipe, loaded.spec.call_options))
            except Exception as exc:
                with self._state_lock:
                    self._last_load_failed = self._loaded is None
                self._release_memory()
                if is_out_of_memory(exc):
                    raise LoadError(
                        "out of memory while loading the model; try f16, low_vram or a "
                        "smaller model"
                    ) from exc
                raise
            with self._pipe_lock:
                old, self._loaded = self._loaded, loaded
                self._variants = Variants(loaded.pipe)
                self._last_load_failed = False
            del old
            self._release_memory()
            return loaded

    def free(self) -> bool:
        """Drop the model and its variants; waits for a running generation first."""
        with self._pipe_lock:
            had_model = self._loaded is not None
            self._loaded = None
            self._variants = None
            self._last_load_failed = False
        self._release_memory()
        return had_model

    # -- generation --------------------------------------------------------
    def check_identity(self, identity: str) -> None:
        """Reject a request meant for another model (a recycled port must not answer)."""
        current = self.model_name
        if identity and current and identity != current:
            raise NotFound(
                f"model identity mismatch: this backend serves {current!r}, "
                f"the request is for {identity!r}"
            )

    def _run(self, ticket: Ticket, *,
             precheck: Callable[[LoadedPipeline], None] | None = None) -> str:
        """Run a ticket on the pipeline worker, one pipeline call at a time.

        Order: shutting down? model loaded? then ``precheck`` (cheap request validation in
        the request's own thread, so a bad request is refused in milliseconds even while
        another generation runs), then the worker's queue.
        """
        if self._closing:
            raise Unavailable("the backend is shutting down")
        with self._state_lock:
            self._busy += 1
        try:
            snapshot = self._loaded
            if snapshot is None:
                raise FailedPrecondition("no model is loaded: call LoadModel first")
            if precheck is not None:
                precheck(snapshot)
            return self._worker.submit(ticket)
        finally:
            with self._state_lock:
                self._busy -= 1

    def _check_inputs(self, fields: list[tuple[str, str]]) -> None:
        from . import media

        for field, path in fields:
            if path:
                media.check_input_path(path, field=field)

    def _precheck_image(self, job: ImageJob) -> Callable[[LoadedPipeline], None]:
        def check(loaded: LoadedPipeline) -> None:
            from . import generation, media

            generation.check_steps(job.steps, self.settings)
            generation.check_size(job.width, job.height, loaded.pipe, self.settings)
            media.check_output_path(job.dst)
            inputs = [] if (job.src and media.is_inpaint_json(job.src)) else [("src", job.src)]
            inputs += [(f"ref_images[{i}]", ref) for i, ref in enumerate(job.ref_images)]
            self._check_inputs(inputs)

        return check

    def _precheck_video(self, job: VideoJob) -> Callable[[LoadedPipeline], None]:
        def check(loaded: LoadedPipeline) -> None:
            from . import generation, media

            generation.plan_video(loaded, job, self.settings)  # an image model: refused here
            generation.check_size(job.width, job.height, loaded.pipe, self.settings)
            media.check_output_path(job.dst)
            self._check_inputs([("start_image", job.start_image), ("end_image", job.end_image)])

        return check

    def generate_image(self, job: ImageJob, is_cancelled: IsCancelled) -> str:
        from . import generation

        loaded = self._loaded
        if loaded is not None and generation.makes_video(loaded.pipe):
            # LocalAI's img2vid / txt2vid examples go through the image endpoint.
            return self.generate_video(generation.video_job_from_image(job), is_cancelled)
        return self._run(Ticket(is_cancelled, image_job=job),
                         precheck=self._precheck_image(job))

    def generate_video(self, job: VideoJob, is_cancelled: IsCancelled) -> str:
        from . import generation

        def work(loaded: LoadedPipeline, _variants: Variants) -> str:
            return generation.run_video(loaded, job, self.settings, is_cancelled)

        return self._run(Ticket(is_cancelled, work=work), precheck=self._precheck_video(job))

    def upscale(self, job: UpscaleJob, is_cancelled: IsCancelled) -> str:
        from . import generation

        loaded = self._loaded
        if loaded is None or not generation.is_upscaler(loaded.pipe):
            # The Lanczos path needs no model and no pipeline.
            return generation.run_upscale(None, job, self.settings, is_cancelled)

        def work(loaded: LoadedPipeline, _variants: Variants) -> str:
            return generation.run_upscale(loaded, job, self.settings, is_cancelled)

        return self._run(Ticket(is_cancelled, work=work))

    # -- Status ------------------------------------------------------------
    def memory(self) -> tuple[int, dict[str, int]]:
        """Process RSS in bytes, plus device memory when a GPU is in use."""
        import sys

        import psutil

        rss = psutil.Process().memory_info().rss
        breakdown = {"rss": rss}
        ready = self._imports_ready is None or self._imports_ready.is_set()
        torch = sys.modules.get("torch") if ready else None
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            breakdown["gpu_allocated"] = int(torch.cuda.memory_allocated())
            breakdown["gpu_reserved"] = int(torch.cuda.memory_reserved())
        return rss, breakdown
