"""Per-request timings and the hooks the engine's pipeline thread reports through.

The gRPC thread that serves a request opens a :class:`RequestTimings` (``begin``); the
pipeline thread fills it in (queue wait, prepare, pipeline, write, seed, size, steps,
batch) before it hands the result back; the RPC layer then logs one line and feeds the
metrics from it. Everything here is plain attribute writes and ``perf_counter`` calls, so
it costs nothing measurable per request. No third-party imports: the engine uses it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

now = time.perf_counter


@dataclass
class RequestTimings:
    """What one generation request spent where, and what it made."""

    queued_at: float | None = None  # perf_counter when it joined the pipeline queue
    queue_s: float | None = None  # waiting for the pipeline thread
    prepare_s: float | None = None  # validation, input images, prompt encoding setup
    pipeline_s: float | None = None  # the pipeline call (shared by a whole batch)
    write_s: float | None = None  # encoding and writing the output file
    pipeline: str = ""  # pipeline class that ran it
    seed: int | None = None
    width: int = 0
    height: int = 0
    steps: int = 0
    batch: int = 0  # requests in the pipeline call (largest denoising step) it was part of
    shared_steps: int | None = None  # step-level batching: steps it shared with others

    def as_fields(self) -> dict[str, object]:
        """The set values as plain fields (seconds rounded), for logs."""
        fields: dict[str, object] = {}
        for name in ("queue_s", "prepare_s", "pipeline_s", "write_s"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = round(value, 4)
        if self.pipeline:
            fields["pipeline"] = self.pipeline
        if self.seed is not None:
            fields["seed"] = self.seed
        if self.width and self.height:
            fields["width"], fields["height"] = self.width, self.height
        if self.steps:
            fields["steps"] = self.steps
        if self.batch:
            fields["batch"] = self.batch
        if self.shared_steps is not None:
            fields["shared_steps"] = self.shared_steps
        return fields


class Sink(Protocol):
    """Receives worker events that are not tied to one request (metrics implements it)."""

    def queue_changed(self, delta: int) -> None:
        """Requests waiting for the pipeline went up or down by ``delta``."""

    def pipeline_call(self, pipeline: str, batch: int, steps: int) -> None:
        """One successful image pipeline call made ``batch`` images of ``steps`` steps."""

    def denoising_step(self, pipeline: str, active: int, seconds: float) -> None:
        """One step of a step-level batch served ``active`` requests in ``seconds`` (the
        images of a step-level batch are reported once it drains, as one ``pipeline_call``
        of ``steps=0``: its steps are counted here)."""


_local = threading.local()
sink: Sink | None = None  # set once at start-up when metrics are on; one server per process


def begin() -> RequestTimings:
    """Open a fresh record for the request served by this thread."""
    record = RequestTimings()
    _local.record = record
    return record


def current() -> RequestTimings | None:
    """The record of the request this thread serves, if the RPC layer opened one."""
    return getattr(_local, "record", None)


def end() -> None:
    """Forget this thread's record (the thread goes on to serve other requests)."""
    _local.record = None


def set_sink(new_sink: Sink | None) -> None:
    """Install (or remove) the receiver of worker events; called by ``serve``."""
    global sink
    sink = new_sink


def queued(record: RequestTimings | None) -> None:
    """The request joined the pipeline queue."""
    if record is not None:
        record.queued_at = now()
    if sink is not None:
        sink.queue_changed(1)


def dequeued(record: RequestTimings | None) -> None:
    """The worker took the request off the queue (to run it, or to refuse it)."""
    if record is not None and record.queued_at is not None:
        record.queue_s = now() - record.queued_at
    if sink is not None:
        sink.queue_changed(-1)


def pipeline_ran(items: list[tuple[RequestTimings | None, int | None, int]], pipeline: str,
                 seconds: float) -> None:
    """A pipeline call served ``items`` (record, seed or None, steps): note it on each
    request. The seed is the value the plan used, never read back from the reply."""
    for record, seed, steps in items:
        if record is not None:
            record.pipeline_s, record.pipeline, record.batch = seconds, pipeline, len(items)
            record.seed, record.steps = seed, steps
    if sink is not None and items:
        sink.pipeline_call(pipeline, len(items), items[0][2])


def stepped_request_ran(record: RequestTimings | None, *, seed: int, steps: int, pipeline: str,
                        seconds: float, batch: int, shared_steps: int) -> None:
    """A request served by step-level batching finished its denoising in ``seconds``: the
    largest step it was part of and how many of its steps it shared."""
    if record is not None:
        record.pipeline_s, record.pipeline, record.batch = seconds, pipeline, batch
        record.seed, record.steps, record.shared_steps = seed, steps, shared_steps


def step_ran(pipeline: str, active: int, seconds: float) -> None:
    """One denoising step of a step-level batch served ``active`` requests."""
    step = getattr(sink, "denoising_step", None)
    if step is not None:
        step(pipeline, active, seconds)


def loop_drained(pipeline: str, served: int) -> None:
    """A step-level batch served ``served`` requests (its steps were counted per step)."""
    if sink is not None and served > 0:
        sink.pipeline_call(pipeline, served, 0)


def wrote(record: RequestTimings | None, image: object, seconds: float) -> None:
    """The request's output was encoded and written in ``seconds``; note its real size."""
    if record is not None:
        record.write_s = seconds
        record.width = int(getattr(image, "width", 0) or 0)
        record.height = int(getattr(image, "height", 0) or 0)
