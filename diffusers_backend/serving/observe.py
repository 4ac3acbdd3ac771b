"""Wraps each unary RPC handler: one log line per generation request, metrics per call.

The wrapper runs on the thread that serves the call. It opens the request's
:class:`~.timings.RequestTimings` (the engine's pipeline thread fills it in), and once the call
returns or aborts it reads the status code from the context, logs the request line and,
when metrics are on, counts the call. Reporting never changes or breaks the call itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from diffusers_backend.engine import timings
from diffusers_backend.serving.logs import log_request

if TYPE_CHECKING:  # prometheus_client is imported only when metrics are on
    from diffusers_backend.serving.metrics import Metrics

log = logging.getLogger(__name__)
GENERATION_METHODS = frozenset({"GenerateImage", "GenerateVideo", "UpscaleImage"})
Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _code_name(context: grpc.ServicerContext, response: Any) -> str:
    """The status the client gets: what abort/set_code set, else OK or UNKNOWN."""
    code = getattr(context, "code", lambda: None)()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "OK" if response is not None else "UNKNOWN"


def _complete(record: timings.RequestTimings, request: Any, response: Any,
              started: float) -> None:
    """Fill what the engine could not know (size and steps of calls it never saw) from the
    request. Per-call facts (seed used, steps, pipeline class) come from the engine as
    values, never read back from the reply text.

    The request thread validates the request and builds its pipeline call before it
    queues it, so the time from the call's start to joining the queue is its prepare time.
    """
    if record.prepare_s is None and record.queued_at is not None:
        record.prepare_s = max(0.0, record.queued_at - started)
    if not record.width and not record.height:
        record.width = int(getattr(request, "width", 0) or 0)
        record.height = int(getattr(request, "height", 0) or 0)
    if not record.steps:
        record.steps = int(getattr(request, "step", 0) or 0)


class RpcObserver:
    """Builds the reporting wrapper around handler functions; ``metrics`` may be None."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics

    def wrap(self, full_method: str, behavior: Behavior) -> Behavior:
        """``behavior`` with reporting around it (keeps its thread-pool routing)."""
        service, _, method = full_method.lstrip("/").rpartition("/")
        generation = service == "backend.Backend" and method in GENERATION_METHODS
        metrics = self.metrics
        if metrics is None and not generation:
            return behavior

        def run(request: Any, context: grpc.ServicerContext) -> Any:
            record = timings.begin() if generation else None
            started = timings.now()
            response = None
            try:
                response = behavior(request, context)
                return response
            finally:
                elapsed = timings.now() - started
                if record is not None:
                    timings.end()
                try:
                    code = _code_name(context, response)
                    if record is not None:
                        _complete(record, request, response, started)
                        log_request(method, code, elapsed, record)
                    if metrics is not None:
                        metrics.observe_rpc(service, method, code, elapsed, record, response)
                except Exception:  # noqa: BLE001 - reporting must never fail a call
                    log.debug("reporting %s failed", full_method, exc_info=True)

        pool = getattr(behavior, "experimental_thread_pool", None)
        if pool is not None:
            run.experimental_thread_pool = pool  # type: ignore[attr-defined]
        return run
