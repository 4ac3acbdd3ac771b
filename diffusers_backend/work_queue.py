"""One thread runs every pipeline call, batching compatible text-to-image requests.

Why one thread: a diffusers pipeline keeps per-call state (scheduler timesteps, LoRA
scales), so calls on it must not overlap; and torch's CPU thread pools are per calling
thread, so calls hopping between gRPC threads leave idle pools spinning on the cores.
Why batches: requests that differ only in prompt, negative prompt and seed can share one
pipeline call (prompts and generators become lists); on a busy server that is far more
throughput than running them one after another, with each image still made from its own
seed. A batch that runs out of memory is retried one request at a time.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import timings
from .errors import Cancelled, FailedPrecondition, is_out_of_memory
from .jobs import ImageJob
from .settings import Settings

if TYPE_CHECKING:
    from .generation import PreparedImage
    from .loading.pipeline_loader import LoadedPipeline

log = logging.getLogger(__name__)
IsCancelled = Callable[[], bool]
Work = Callable[[Any, Any], str]


@dataclass(eq=False)
class Ticket:
    """One request waiting for the pipeline: an image job (batchable) or other work."""

    is_cancelled: IsCancelled
    image_job: ImageJob | None = None
    work: Work | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: str = ""
    error: BaseException | None = None
    record: timings.RequestTimings | None = None  # filled in for the request's log line

    def finish(self, result: str = "", error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()

    def wait(self) -> str:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class PipelineWorker:
    """The single thread that owns pipeline calls; requests queue here and wait."""

    def __init__(self, settings: Settings, pipe_lock: threading.Lock,
                 snapshot: Callable[[], tuple[Any, Any]], on_oom: Callable[[], None]):
        self._settings = settings
        self._pipe_lock = pipe_lock
        self._snapshot = snapshot
        self._on_oom = on_oom
        self._queue: deque[Ticket] = deque()
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="pipeline", daemon=True)
        self._thread.start()

    def submit(self, ticket: Ticket) -> str:
        """Queue the ticket and block until it has run (or failed)."""
        ticket.record = timings.current()
        with self._cv:
            timings.queued(ticket.record)
            self._queue.append(ticket)
            self._cv.notify()
        return ticket.wait()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                ticket = self._queue.popleft()
                timings.dequeued(ticket.record)
            try:
                self._serve(ticket)
            except BaseException as exc:  # noqa: BLE001 - never let the worker die
                log.exception("pipeline worker error")
                if not ticket.done.is_set():
                    ticket.finish(error=exc)

    def _serve(self, first: Ticket) -> None:
        with self._pipe_lock:
            loaded, variants = self._snapshot()
            if loaded is None:
                first.finish(error=FailedPrecondition("no model is loaded: call LoadModel first"))
                return
            if first.is_cancelled():
                first.finish(error=Cancelled("request cancelled by the client while it "
                                             "waited its turn"))
                return
            if first.image_job is None:
                try:
                    started = timings.now()
                    result = first.work(loaded, variants)  # type: ignore[misc]
                    timings.work_ran(first.record, type(loaded.pipe).__name__,
                                     timings.now() - started)
                    first.finish(result=result)
                except Exception as exc:  # noqa: BLE001 - handed to the request's thread
                    self._note_oom(exc)
                    first.finish(error=exc)
                return
            self._serve_images(loaded, variants, first)

    def _note_oom(self, exc: BaseException) -> None:
        if is_out_of_memory(exc):
            log.warning("out of memory; freeing cached memory before the next request")
            self._on_oom()

    # -- image batches -----------------------------------------------------
    def _serve_images(self, loaded: LoadedPipeline, variants: Any, first: Ticket) -> None:
        from . import generation

        started = timings.now()
        try:
            prepared = generation.prepare_image(loaded, variants, first.image_job,
                                                self._settings)
        except Exception as exc:  # noqa: BLE001
            first.finish(error=exc)
            return
        if first.record is not None:
            first.record.prepare_s = timings.now() - started
        batch = [(first, prepared)]
        key = prepared.batch_key()
        if key is not None and self._settings.max_batch > 1:
            batch += self._collect(loaded, variants, key, _pixels(prepared))
        if len(batch) > 1:
            log.info("batching %d text-to-image requests in one pipeline call", len(batch))
        self._execute(batch)

    def _collect(self, loaded: LoadedPipeline, variants: Any, key: tuple,
                 pixels: int) -> list[tuple[Ticket, PreparedImage]]:
        """Take queued requests whose call matches ``key``, within the batch limits."""
        from . import generation

        with self._cv:
            candidates = [t for t in self._queue if t.image_job is not None
                          and not t.image_job.src and not t.image_job.ref_images]
        taken: list[tuple[Ticket, PreparedImage]] = []
        for ticket in candidates:
            if len(taken) + 1 >= self._settings.max_batch:
                break
            if ticket.is_cancelled():
                continue
            started = timings.now()
            try:
                prepared = generation.prepare_image(loaded, variants, ticket.image_job,
                                                    self._settings)
            except Exception as exc:  # noqa: BLE001 - its own error, answered now
                if self._take(ticket):
                    ticket.finish(error=exc)
                continue
            if prepared.batch_key() != key:
                continue
            if pixels + _pixels(prepared) > self._settings.max_batch_pixels:
                break
            if self._take(ticket):
                pixels += _pixels(prepared)
                taken.append((ticket, prepared))
                if ticket.record is not None:
                    ticket.record.prepare_s = timings.now() - started
        return taken

    def _take(self, ticket: Ticket) -> bool:
        with self._cv:
            try:
                self._queue.remove(ticket)
            except ValueError:
                return False
        timings.dequeued(ticket.record)
        return True

    def _execute(self, batch: list[tuple[Ticket, PreparedImage]]) -> None:
        from . import generation

        tickets = [t for t, _ in batch]
        started = timings.now()
        try:
            images = generation.execute_images(
                [p for _, p in batch], lambda: all(t.is_cancelled() for t in tickets))
            timings.pipeline_ran([(t.record, p.seed, p.steps) for t, p in batch],
                                 type(batch[0][1].pipe).__name__, timings.now() - started)
        except Exception as exc:  # noqa: BLE001
            self._note_oom(exc)
            if len(batch) > 1 and is_out_of_memory(exc):
                log.warning("a batch of %d ran out of memory; running them one by one",
                            len(batch))
                for item in batch:
                    self._execute([item])
                return
            for ticket in tickets:
                ticket.finish(error=exc)
            return
        for (ticket, prepared), image in zip(batch, images, strict=True):
            if ticket.is_cancelled():
                ticket.finish(error=Cancelled("request cancelled by the client"))
                continue
            try:
                started = timings.now()
                result = generation.finish_image(prepared, image)
                timings.wrote(ticket.record, image, timings.now() - started)
                ticket.finish(result=result)
            except Exception as exc:  # noqa: BLE001
                ticket.finish(error=exc)


def _pixels(prepared: PreparedImage) -> int:
    call = prepared.call
    return int(call.get("width") or 512) * int(call.get("height") or 512)
