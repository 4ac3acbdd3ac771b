"""The engine's executor: the one owner of the loaded model, its thread and its writers.

Request threads validate a request once (``plan_image`` / ``plan_video`` / ``plan_upscale``)
and hand the engine a plan; the pipeline thread asks the :class:`~.scheduler.Scheduler` what
to run (whom a request batches with, how long to wait for companions, who joins a running
denoising loop, what to do after running out of memory) and runs it, handing each output to
an output writer, so the next batch starts while PNGs are encoded.

Why one thread: a diffusers pipeline keeps per-call state (scheduler timesteps, LoRA scales),
so calls on it must not overlap; and torch's CPU thread pools are per calling thread.
Two kinds of batches:
* request-level: text-to-image requests that differ only in prompt, negative prompt and seed
  share one pipeline call, each image still made from its own seed;
* step-level (``DIFFUSERS_STEP_BATCHING``; on by default, ``auto`` meaning ``1``;
  docs/engine.md): for the families whose denoising loop the engine owns
  (``tasks/denoise``), requests join a running loop between steps and leave it when their
  own steps are done, so a 4-step request does not wait for a 25-step one.
A request that waited while another model was loaded is planned again against the new one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from diffusers_backend.engine import progress, timings
from diffusers_backend.engine.block_checks import watching
from diffusers_backend.engine.clock import SYSTEM_CLOCK, Clock
from diffusers_backend.engine.profiling import profiled
from diffusers_backend.engine.scheduler import Scheduler
from diffusers_backend.engine.stepping import StepLoop
from diffusers_backend.engine.tickets import Arrival, Plan, Ticket, replanned, waited_its_turn
from diffusers_backend.errors import (
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    is_out_of_memory,
)
from diffusers_backend.settings import Settings
from diffusers_backend.tasks.calls import IsCancelled

if TYPE_CHECKING:
    from diffusers_backend.loading.pipeline_loader import LoadedPipeline

log = logging.getLogger(__name__)


class Variants:
    """The img2img / inpainting variants of the loaded pipeline, made once when first asked
    for (``registry.variants.make_variant``: same weights, no second copy)."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._made: dict[str, Any] = {}

    def get(self, task: str) -> Any:
        if task not in self._made:
            from diffusers_backend.registry.variants import make_variant

            try:
                self._made[task] = make_variant(self._pipe, task)
            except ValueError:
                raise InvalidArgument(
                    f"the loaded {type(self._pipe).__name__} has no {task} variant in diffusers;"
                    f" load an {task} pipeline_type for this request"
                ) from None
        return self._made[task]


class Engine:
    """Holds the loaded model and runs plans on it, as its :class:`Scheduler` decides."""

    def __init__(self, settings: Settings, release_memory: Callable[[], None],
                 clock: Clock = SYSTEM_CLOCK) -> None:
        from diffusers_backend.tasks.denoise import step_key

        self._settings = settings
        self.clock = clock  # batch window, idle release, call lengths (engine/clock.py)
        self._release_memory = release_memory
        self.lock = threading.Lock()  # held for every pipeline call and for model swaps
        self._loaded: LoadedPipeline | None = None
        self._variants: Variants | None = None
        self.scheduler = Scheduler(settings, step_key)
        self._cv = threading.Condition()
        self._used_since_release = False
        self.swap_waiting = False  # a model swap waits for the pipeline lock
        self._held: list[tuple[Ticket, Any, Any]] | None = None  # a profiled loop's outputs
        self._writers = ThreadPoolExecutor(max_workers=settings.output_writers,
                                           thread_name_prefix="writer")
        self._thread = threading.Thread(target=self._loop, name="pipeline", daemon=True)
        self._thread.start()

    # -- the model ------------------------------------------------------------------------
    @property
    def loaded(self) -> LoadedPipeline | None:
        return self._loaded

    def swap(self, loaded: LoadedPipeline | None) -> LoadedPipeline | None:
        """Put ``loaded`` (or nothing) in place once the running call is done; the old one.
        A running step-level loop admits no one while a swap waits, so it drains."""
        self.swap_waiting = True
        with self.lock:
            self.swap_waiting = False
            old, self._loaded = self._loaded, loaded
            self._variants = Variants(loaded.pipe) if loaded is not None else None
            with self._cv:
                self.scheduler.model_changed()
        return old

    # -- requests -------------------------------------------------------------------------
    @contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Wrap a request's validation: while it runs, a batch about to start waits for it."""
        arrival = Arrival()
        with self._cv:
            self.scheduler.arriving += 1
        try:
            yield arrival
        finally:
            if not arrival.queued:
                with self._cv:
                    self.scheduler.arriving -= 1
                    self._cv.notify_all()

    def submit(self, plan: Plan, is_cancelled: IsCancelled, arrival: Arrival | None = None,
               replan: Callable[[Any], Any] | None = None) -> str:
        """Queue a validated plan and block until it has run and been written (or failed).

        ``replan(loaded)`` plans the request again if another model is loaded meanwhile."""
        ticket = Ticket(plan, is_cancelled, timings.current(), replan)
        ticket.progress = progress.HUB.queued(plan)
        with self._cv:
            timings.queued(ticket.record)
            self.scheduler.push(ticket)
            if arrival is not None and not arrival.queued:
                arrival.queued = True
                self.scheduler.arriving -= 1
            self._cv.notify_all()
        return ticket.wait()

    def batch_windows(self) -> tuple[float, float]:
        """See :meth:`Scheduler.batch_windows`."""
        return self.scheduler.batch_windows()

    # -- the pipeline thread ---------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            first = self._next()
            try:
                self._gather(first)
                self._serve(first)
            except BaseException as exc:  # noqa: BLE001 - never let the pipeline thread die
                log.exception("pipeline thread error")
                if not first.done.is_set():
                    first.finish(error=exc)

    def _next(self) -> Ticket:
        """The oldest ticket; while idle, give cached device memory back once."""
        idle_after = self._settings.idle_release_s
        with self._cv:
            while not self.scheduler.queue:
                timeout = idle_after if (self._used_since_release and idle_after > 0) else None
                if not self.clock.wait(self._cv, timeout) and not self.scheduler.queue:
                    self._used_since_release = False
                    self._cv.release()
                    try:
                        self._release_idle_memory()
                    finally:
                        self._cv.acquire()
            ticket: Ticket | None = self.scheduler.pop()
            assert ticket is not None  # the queue is not empty here
            timings.dequeued(ticket.record)
            return ticket

    def _release_idle_memory(self) -> None:
        with self.lock:
            self._release_memory()
        log.debug("idle: cached device memory released")

    def _gather(self, first: Ticket) -> None:
        """A batchable request waits (bounded) for companions, as long as the scheduler says."""
        clock = self.clock
        started = clock.monotonic()
        with self._cv:
            while (wait := self.scheduler.gather_wait(first, clock.monotonic() - started)) > 0:
                clock.wait(self._cv, wait)

    def _serve(self, first: Ticket) -> None:
        with self.lock:
            loaded, variants = self._loaded, self._variants
            if loaded is None:
                first.finish(error=FailedPrecondition("no model is loaded: call LoadModel first"))
                return
            if first.is_cancelled():
                first.finish(error=waited_its_turn())
                return
            try:
                plan = replanned(first, loaded)
            except Exception as exc:  # noqa: BLE001 - its own error, answered now
                first.finish(error=exc)
                return
            step_key = self.scheduler.step_key(plan)
            if step_key is not None:
                self._run_loop(StepLoop(self, loaded, variants, step_key), first, plan)
                return
            batch = [(first, plan)]
            key = plan.batch_key()
            if key is not None:
                with self._cv:
                    taken = self.scheduler.companions(key, plan.pixels)
                for ticket in taken:
                    timings.dequeued(ticket.record)
                batch += [(ticket, ticket.plan) for ticket in taken]
            if len(batch) > 1:
                log.info("batching %d text-to-image requests in one pipeline call", len(batch))
            self._execute(batch, variants)

    def _run_loop(self, loop: StepLoop, first: Ticket, plan: Any) -> None:
        """Run a step-level loop; profiled, its outputs are written once the trace is, as
        for a pipeline call."""
        if not self._settings.profile_dir:
            loop.run(first, plan)
            return
        self._held = []
        try:
            with profiled(self._settings.profile_dir,
                          f"{type(plan).__name__} x1+ (step-level loop)"):
                loop.run(first, plan)
        finally:
            held, self._held = self._held, None
        for ticket, done_plan, output in held:
            self.hand_to_writer(ticket, done_plan, output)

    # -- what a step-level loop asks of its host (stepping.LoopHost) ------------------------
    @property
    def queue_lock(self) -> threading.Condition:
        return self._cv

    def out_of_memory(self) -> None:
        """Give cached device memory back after running out of it, before going on."""
        log.warning("out of memory; freeing cached memory before the next request")
        self._release_memory()

    def release_memory(self) -> None:
        """Give cached device memory back now (after an abandoned call)."""
        self._release_memory()

    def call_done(self, seconds: float) -> None:
        """End-of-call bookkeeping, the same for a pipeline call and a looped request."""
        self.scheduler.call_ran(seconds)
        self._used_since_release = True

    def finished(self, ticket: Ticket, plan: Any, output: Any) -> None:
        """A looped request's picture is made: to a writer (held while profiling)."""
        if self._held is not None:
            self._held.append((ticket, plan, output))
        else:
            self.hand_to_writer(ticket, plan, output)

    def _execute(self, batch: list[tuple[Ticket, Any]], variants: Any) -> None:
        tickets = [t for t, _ in batch]
        plans = [p for _, p in batch]
        started = self.clock.monotonic()
        for ticket in tickets:
            progress.HUB.started(ticket.progress)
        progress.running([t.progress for t in tickets])  # its step callback reports to them
        try:
            label = f"{type(plans[0]).__name__} x{len(plans)}"
            all_cancelled = lambda: all(t.is_cancelled() for t in tickets)  # noqa: E731
            with self.scheduler.sizer.measure(len(plans), plans[0].pixels), \
                    profiled(self._settings.profile_dir, label), watching(all_cancelled):
                outputs = type(plans[0]).run(plans, variants, all_cancelled)
        except Exception as exc:  # noqa: BLE001 - handed to the requests' threads
            progress.running([])
            if isinstance(exc, Cancelled):  # what the abandoned call held goes back now
                exc.with_traceback(None)  # its frames hold the call's tensors
                self._release_memory()
            if is_out_of_memory(exc):
                self.out_of_memory()
                if self.scheduler.out_of_memory(len(plans), plans[0].pixels) > 0:
                    log.warning("a batch of %d ran out of memory; running them one by one",
                                len(batch))
                    for item in batch:
                        self._execute([item], variants)
                    return
            for ticket in tickets:
                ticket.finish(error=exc)
            return
        progress.running([])
        self.call_done(self.clock.monotonic() - started)
        timings.pipeline_ran([(t.record, getattr(p, "seed", None),
                               int(getattr(output, "steps", 0) or getattr(p, "steps", 0)))
                              for (t, p), output in zip(batch, outputs, strict=True)],
                             type(plans[0].loaded.pipe).__name__ if plans[0].loaded else "",
                             self.scheduler.last_call_s)
        for (ticket, plan), output in zip(batch, outputs, strict=True):
            self.hand_to_writer(ticket, plan, output)

    def hand_to_writer(self, ticket: Ticket, plan: Plan, output: Any) -> None:
        """Answer a cancelled request now; else write its output on a writer thread."""
        if ticket.is_cancelled():
            ticket.finish(error=Cancelled("request cancelled by the client"))
            return
        self._writers.submit(_write, ticket, plan, output)


def _write(ticket: Ticket, plan: Plan, output: Any) -> None:
    """Writer thread: encode and write one output atomically, then answer its request."""
    started = timings.now()
    try:
        result = plan.write(output)
    except Exception as exc:  # noqa: BLE001 - handed to the request's thread
        ticket.finish(error=exc)
        return
    timings.wrote(ticket.record, output, timings.now() - started)
    ticket.finish(result=result)
