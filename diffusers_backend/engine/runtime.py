"""The model's life cycle (LoadModel, Free, Status) and the entry point of each request.

The :class:`~diffusers_backend.engine.engine.Engine` owns the loaded model and runs every pipeline
call; this module loads a model outside the engine's lock and swaps it in under it, so a
failed load keeps the old model serving and a load never frees weights under a running
generation. A request is validated here, in its own thread, and handed to the engine.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from enum import IntEnum
from typing import TYPE_CHECKING

from diffusers_backend.engine.admission import admit
from diffusers_backend.engine.engine import Engine
from diffusers_backend.engine.tickets import Plan
from diffusers_backend.errors import (
    FailedPrecondition,
    LoadError,
    NotFound,
    Unavailable,
    is_out_of_memory,
)
from diffusers_backend.loading.options_table import ignored_option_warning
from diffusers_backend.loading.spec import LoadSpec
from diffusers_backend.settings import Settings
from diffusers_backend.tasks.calls import IsCancelled
from diffusers_backend.tasks.jobs import ImageJob, UpscaleJob, VideoJob

if TYPE_CHECKING:
    from diffusers_backend.loading.pipeline_loader import LoadedPipeline

log = logging.getLogger(__name__)
IMPORT_TIMEOUT_S = 600.0


class State(IntEnum):
    """Mirrors ``StatusResponse.State`` on the wire."""

    ERROR = -1
    UNINITIALIZED = 0
    BUSY = 1
    READY = 2


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
    _trim_heap()


def _trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc): after a huge request on
    the CPU, resident memory returns to where it was instead of staying at its peak."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _drop_unaccepted_options(loaded: LoadedPipeline, unknown: list[str]) -> None:
    """Serve without the options no call of the pipeline takes, with a warning naming them."""
    if not unknown:
        return
    options = dict(loaded.spec.options)
    for key in unknown:
        # ``cfg_scale`` reaches the call as ``guidance_scale``: name it as the user wrote it.
        written = "cfg_scale" if key == "guidance_scale" and key not in options else key
        options.pop(written, None)
        loaded.warnings.append(ignored_option_warning(written, type(loaded.pipe)))
    loaded.spec = replace(loaded.spec, options=options)


class ModelRuntime:
    """Holds at most one loaded model (through its engine) and serves requests on it."""

    def __init__(self, settings: Settings, imports_ready: threading.Event | None = None):
        self.settings = settings
        self._imports_ready = imports_ready
        self._load_lock = threading.Lock()  # one LoadModel at a time
        self._state_lock = threading.Lock()
        self._busy = 0
        self._last_load_failed = False
        self._closing = False
        self.engine = Engine(settings, self._release_memory)

    # -- state -------------------------------------------------------------
    @property
    def state(self) -> State:
        with self._state_lock:
            if self._busy:
                return State.BUSY
            if self.engine.loaded is not None:
                return State.READY
            return State.ERROR if self._last_load_failed else State.UNINITIALIZED

    @property
    def model_name(self) -> str:
        """The ``Model`` the loaded model's LoadModel received (what requests name)."""
        loaded = self.engine.loaded
        return loaded.identity if loaded is not None else ""

    def _release_memory(self) -> None:
        """release_memory, but never while torch is still being imported in the background
        (touching a half-imported torch raises AttributeError)."""
        if self._imports_ready is None or self._imports_ready.is_set():
            release_memory()
        else:
            gc.collect()

    def busy(self) -> bool:
        """A generation or a load is in progress."""
        return self._busy > 0 or self._load_lock.locked()

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
        from diffusers_backend.engine.parallel.loader import load_model, stop_workers
        from diffusers_backend.tasks.calls import unaccepted_call_options

        with self._load_lock:
            try:
                loaded = load_model(spec, self.settings)  # TensorParallelSize: parallel/
                _drop_unaccepted_options(loaded, unaccepted_call_options(
                    loaded.pipe, loaded.spec.call_options))
                self._prepare_admission(loaded)
            except Exception as exc:
                with self._state_lock:
                    self._last_load_failed = self.engine.loaded is None
                self._release_memory()
                if is_out_of_memory(exc):
                    raise LoadError(
                        "out of memory while loading the model; try f16, low_vram or a "
                        "smaller model"
                    ) from exc
                raise
            old = self.engine.swap(loaded)
            stop_workers(old)
            self._last_load_failed = False
            del old
            self._release_memory()
            return loaded

    def _prepare_admission(self, loaded: LoadedPipeline) -> None:
        """Checks between blocks (cancellation inside a step) and the timing of each call,
        then a warm-up step so admission has a rate (engine/admission.py)."""
        from diffusers_backend.engine.block_checks import install
        from diffusers_backend.engine.warmup import warm_up

        install(loaded.pipe)
        # A compiled denoiser has no block hooks to measure with, and LoadModel already ran
        # it once; a warm-up at another size would only make it compile again.
        compiled = any(loaded.spec.options.get(key) for key in ("compile", "compile_regional"))
        if self.settings.warmup and not compiled:
            warm_up(loaded)

    def free(self) -> bool:
        """Drop the model and its variants; waits for a running generation first."""
        from diffusers_backend.engine.parallel.loader import stop_workers

        old = self.engine.swap(None)
        stop_workers(old)
        had_model = old is not None
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

    def _serve(self, make_plan: Callable[[LoadedPipeline], Plan],
               is_cancelled: IsCancelled) -> str:
        """Validate a request against the loaded model in this thread (a bad one is refused
        in milliseconds, however busy the engine is), then hand it to the engine."""
        if self._closing:
            raise Unavailable("the backend is shutting down")
        with self._state_lock:
            self._busy += 1
        try:
            with self.engine.arriving() as arrival:
                loaded = self.engine.loaded
                if loaded is None:
                    raise FailedPrecondition("no model is loaded: call LoadModel first")
                plan = make_plan(loaded)
                admit(plan, is_cancelled, self.settings)
                return self.engine.submit(plan, is_cancelled, arrival, replan=make_plan)
        finally:
            with self._state_lock:
                self._busy -= 1

    def generate_image(self, job: ImageJob, is_cancelled: IsCancelled) -> str:
        from diffusers_backend.tasks.image import plan_image
        from diffusers_backend.tasks.video import makes_video, plan_video, video_job_from_image

        def plan(loaded: LoadedPipeline) -> Plan:
            if makes_video(loaded.pipe):
                # LocalAI's img2vid / txt2vid examples go through the image endpoint.
                return plan_video(loaded, video_job_from_image(job), self.settings)
            return plan_image(loaded, job, self.settings)

        return self._serve(plan, is_cancelled)

    def generate_video(self, job: VideoJob, is_cancelled: IsCancelled) -> str:
        from diffusers_backend.tasks.video import plan_video

        return self._serve(lambda loaded: plan_video(loaded, job, self.settings), is_cancelled)

    def upscale(self, job: UpscaleJob, is_cancelled: IsCancelled) -> str:
        from diffusers_backend.tasks.upscale import UpscalePlan, is_upscaler, plan_upscale

        loaded = self.engine.loaded
        if loaded is None or not is_upscaler(loaded.pipe):
            # The Lanczos path needs no model and no pipeline thread.
            plan = plan_upscale(None, job, self.settings)
            return plan.write(UpscalePlan.run([plan], None, is_cancelled)[0])
        return self._serve(lambda current: plan_upscale(current, job, self.settings),
                           is_cancelled)

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
