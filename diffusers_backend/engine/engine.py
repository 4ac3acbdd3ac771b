"""The engine: the one owner of the loaded model, its thread, its batches and its writers.

Request threads validate a request once (``plan_image`` / ``plan_video`` / ``plan_upscale``)
and hand the engine a plan; the engine's pipeline thread runs plans, alone or batched, and
hands each output to an output writer, so the next batch starts while PNGs are encoded.

Why one thread: a diffusers pipeline keeps per-call state (scheduler timesteps, LoRA scales),
so calls on it must not overlap; and torch's CPU thread pools are per calling thread.
Why batches: text-to-image requests that differ only in prompt, negative prompt and seed
share one pipeline call, each image still made from its own seed. A batch about to start
waits a short, bounded window for companions (``DIFFUSERS_BATCH_WINDOW_MS``, adaptive by
default: longer while other requests are still being validated, at most 1 % of a call
otherwise), so simultaneous clients become one batch, not 1 + 7. A batch that runs out of
memory is retried one request at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from diffusers_backend.engine import timings
from diffusers_backend.engine.batch_sizer import BatchSizer
from diffusers_backend.engine.profiling import profiled
from diffusers_backend.errors import (
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    is_out_of_memory,
)
from diffusers_backend.settings import Settings

if TYPE_CHECKING:
    from diffusers_backend.loading.pipeline_loader import LoadedPipeline

log = logging.getLogger(__name__)
IsCancelled = Callable[[], bool]
AUTO_WINDOW_FRACTION = 0.1  # of the last pipeline call's time, while companions arrive...
AUTO_WINDOW_BOUNDS_S = (0.002, 0.05)  # ...held between these
IDLE_WINDOW_FRACTION = 0.01  # of the last call, when nobody else is arriving


class Plan(Protocol):
    """A validated request, ready for the pipeline thread (image, video or upscale)."""

    loaded: Any
    pixels: int

    def batch_key(self) -> tuple | None: ...

    def replan(self, loaded: Any) -> Plan: ...

    def write(self, output: Any) -> str: ...

    @staticmethod
    def run(batch: list[Any], variants: Any, is_cancelled: IsCancelled) -> list[Any]: ...


class Variants:
    """The img2img / inpainting variants of the loaded pipeline, made once when first asked
    for (``task_variants.make_variant``: same weights, no second copy)."""

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


@dataclass(eq=False)
class Ticket:
    """One plan waiting for the pipeline thread, and its answer."""

    plan: Any
    is_cancelled: IsCancelled
    record: timings.RequestTimings | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: str = ""
    error: BaseException | None = None

    def finish(self, result: str = "", error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()

    def wait(self) -> str:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class Arrival:
    """A request being validated: counted so the pipeline thread knows companions are on
    their way (see :meth:`Engine.arriving`)."""

    def __init__(self) -> None:
        self.queued = False


class Engine:
    """Holds the loaded model and runs plans on it, one pipeline call at a time."""

    def __init__(self, settings: Settings, release_memory: Callable[[], None]) -> None:
        self._settings = settings
        self._release_memory = release_memory
        self.lock = threading.Lock()  # held for every pipeline call and for model swaps
        self._loaded: LoadedPipeline | None = None
        self._variants: Variants | None = None
        self._queue: deque[Ticket] = deque()
        self._cv = threading.Condition()
        self._arriving = 0
        self._last_call_s = 0.0
        self._used_since_release = False
        self._sizer = BatchSizer(settings.max_batch)
        self._writers = ThreadPoolExecutor(max_workers=settings.output_writers,
                                           thread_name_prefix="writer")
        self._thread = threading.Thread(target=self._loop, name="pipeline", daemon=True)
        self._thread.start()

    # -- the model ------------------------------------------------------------------------
    @property
    def loaded(self) -> LoadedPipeline | None:
        return self._loaded

    def swap(self, loaded: LoadedPipeline | None) -> LoadedPipeline | None:
        """Put ``loaded`` (or nothing) in place once the running call is done; the old one."""
        with self.lock:
            old, self._loaded = self._loaded, loaded
            self._variants = Variants(loaded.pipe) if loaded is not None else None
            self._sizer = BatchSizer(self._settings.max_batch)
        return old

    # -- requests -------------------------------------------------------------------------
    @contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Wrap a request's validation: while it runs, a batch about to start waits for it."""
        arrival = Arrival()
        with self._cv:
            self._arriving += 1
        try:
            yield arrival
        finally:
            if not arrival.queued:
                with self._cv:
                    self._arriving -= 1
                    self._cv.notify_all()

    def submit(self, plan: Plan, is_cancelled: IsCancelled,
               arrival: Arrival | None = None) -> str:
        """Queue a validated plan and block until it has run and been written (or failed)."""
        ticket = Ticket(plan, is_cancelled, timings.current())
        with self._cv:
            timings.queued(ticket.record)
            self._queue.append(ticket)
            if arrival is not None and not arrival.queued:
                arrival.queued = True
                self._arriving -= 1
            self._cv.notify_all()
        return ticket.wait()

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
            while not self._queue:
                timeout = idle_after if (self._used_since_release and idle_after > 0) else None
                if not self._cv.wait(timeout) and not self._queue:
                    self._used_since_release = False
                    self._cv.release()
                    try:
                        self._release_idle_memory()
                    finally:
                        self._cv.acquire()
            ticket = self._queue.popleft()
            timings.dequeued(ticket.record)
            return ticket

    def _release_idle_memory(self) -> None:
        with self.lock:
            self._release_memory()
        log.debug("idle: cached device memory released")

    def batch_windows(self) -> tuple[float, float]:
        """How long a batch about to start may wait: (in any case, while requests are still
        being validated), in seconds.

        ``DIFFUSERS_BATCH_WINDOW_MS`` set: that long in both cases. Auto (the default): while
        companions are on their way, 10 % of the last pipeline call (2 to 50 ms); otherwise
        1 % of it (a third of the 3 % overhead budget), long enough to catch a burst
        whose first request happened to be validated before the others arrived.
        """
        configured = self._settings.batch_window_ms
        if configured is not None:
            return configured / 1000.0, configured / 1000.0
        low, high = AUTO_WINDOW_BOUNDS_S
        busy = min(high, max(low, AUTO_WINDOW_FRACTION * self._last_call_s))
        return min(busy, IDLE_WINDOW_FRACTION * self._last_call_s), busy

    def _gather(self, first: Ticket) -> None:
        """A batchable request waits (bounded) for companions before its batch is formed."""
        if self._settings.max_batch <= 1 or first.plan.batch_key() is None:
            return
        idle, busy = self.batch_windows()
        started = time.monotonic()
        with self._cv:
            while len(self._queue) + 1 < self._settings.max_batch:
                waited = time.monotonic() - started
                limit = busy if self._arriving > 0 else idle
                if waited >= limit:
                    break
                self._cv.wait(limit - waited)

    def _serve(self, first: Ticket) -> None:
        with self.lock:
            loaded, variants = self._loaded, self._variants
            if loaded is None:
                first.finish(error=FailedPrecondition("no model is loaded: call LoadModel first"))
                return
            if first.is_cancelled():
                first.finish(error=Cancelled("request cancelled by the client while it "
                                             "waited its turn"))
                return
            try:
                plan = first.plan if first.plan.loaded is loaded else first.plan.replan(loaded)
            except Exception as exc:  # noqa: BLE001 - its own error, answered now
                first.finish(error=exc)
                return
            batch = [(first, plan)]
            key = plan.batch_key()
            if key is not None:
                batch += self._companions(key, plan.pixels)
            if len(batch) > 1:
                log.info("batching %d text-to-image requests in one pipeline call", len(batch))
            self._execute(batch, variants)

    def _companions(self, key: tuple, pixels: int) -> list[tuple[Ticket, Any]]:
        """Take queued plans with the same batch key, within the batch limits."""
        limit = min(self._sizer.limit(pixels), self._settings.max_batch)
        taken: list[tuple[Ticket, Any]] = []
        with self._cv:
            for ticket in list(self._queue):
                if len(taken) + 1 >= limit:
                    break
                if ticket.is_cancelled() or ticket.plan.batch_key() != key:
                    continue
                if pixels + ticket.plan.pixels > self._settings.max_batch_pixels:
                    break
                self._queue.remove(ticket)
                timings.dequeued(ticket.record)
                pixels += ticket.plan.pixels
                taken.append((ticket, ticket.plan))
        return taken

    def _execute(self, batch: list[tuple[Ticket, Any]], variants: Any) -> None:
        tickets = [t for t, _ in batch]
        plans = [p for _, p in batch]
        started = timings.now()
        try:
            label = f"{type(plans[0]).__name__} x{len(plans)}"
            with self._sizer.measure(len(plans), plans[0].pixels), \
                    profiled(self._settings.profile_dir, label):
                outputs = type(plans[0]).run(plans, variants,
                                             lambda: all(t.is_cancelled() for t in tickets))
        except Exception as exc:  # noqa: BLE001 - handed to the requests' threads
            if is_out_of_memory(exc):
                log.warning("out of memory; freeing cached memory before the next request")
                self._release_memory()
                self._sizer.out_of_memory(len(plans), plans[0].pixels)
                if len(batch) > 1:
                    log.warning("a batch of %d ran out of memory; running them one by one",
                                len(batch))
                    for item in batch:
                        self._execute([item], variants)
                    return
            for ticket in tickets:
                ticket.finish(error=exc)
            return
        self._last_call_s = timings.now() - started
        self._used_since_release = True
        timings.pipeline_ran([(t.record, getattr(p, "seed", 0), getattr(p, "steps", 0))
                              for t, p in batch],
                             type(plans[0].loaded.pipe).__name__ if plans[0].loaded else "",
                             self._last_call_s)
        for (ticket, plan), output in zip(batch, outputs, strict=True):
            if ticket.is_cancelled():
                ticket.finish(error=Cancelled("request cancelled by the client"))
                continue
            self._writers.submit(_write, ticket, plan, output)


def _write(ticket: Ticket, plan: Any, output: Any) -> None:
    """Writer thread: encode and write one output atomically, then answer its request."""
    started = timings.now()
    try:
        result = plan.write(output)
    except Exception as exc:  # noqa: BLE001 - handed to the request's thread
        ticket.finish(error=exc)
        return
    timings.wrote(ticket.record, output, timings.now() - started)
    ticket.finish(result=result)
