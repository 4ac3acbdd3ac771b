"""Process start-up: settings, gRPC server, auth, health, reflection, signals, parent watch.

The port opens before torch and diffusers are imported (that takes seconds); they import
in a background thread and LoadModel waits for them. So the host's Health poll succeeds
within a fraction of a second of start.
"""

from __future__ import annotations

import hmac
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from diffusers_backend import path_guard
from diffusers_backend.errors import BackendError, short_message
from diffusers_backend.serving.hard_exit import exit_now
from diffusers_backend.serving.listen import bind_problem, cannot_listen_message
from diffusers_backend.serving.observe import RpcObserver
from diffusers_backend.serving.request_limits import check_request
from diffusers_backend.settings import DEFAULTS, Settings, SettingsError, load_settings

log = logging.getLogger("diffusers_backend")
CONTROL_THREADS = 4  # a separate pool: Health/Status answer at once even while generating
# Cheap RPCs that run on the control pool, never queued behind generations.
CONTROL_METHODS = frozenset({
    "/backend.Backend/Health",
    "/backend.Backend/Status",
    "/grpc.health.v1.Health/Check",
})
MAX_SEND_BYTES = 64 * 1024 * 1024


def configure_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr as text lines or, with ``fmt="json"``, JSON lines (see ``logs``)."""
    from diffusers_backend.serving.logs import configure_logging as configure

    configure(level, fmt)


_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _deny(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid authorization bearer token")


_UNREAD = object()  # what an unauthenticated request decodes to: its bytes are never parsed


class _Refused:
    """What a request decodes to when it must not reach the servicer: the message to refuse
    it with (INVALID_ARGUMENT). Returned, not raised: grpcio turns a deserializer's exception
    into INTERNAL "Exception deserializing request!"."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _decoder(deserializer: Any, max_prompt_chars: int) -> Any:
    """``deserializer`` that never raises: bytes that do not parse, or a request above the
    limits of ``request_limits``, decode to a :class:`_Refused`."""
    message_type = getattr(getattr(deserializer, "__self__", None), "__name__", "request")

    def decode(raw: bytes) -> Any:
        try:
            request = deserializer(raw)
        except Exception:  # noqa: BLE001 - any parse failure is the sender's
            return _Refused(f"the request is not a valid {message_type} message "
                            f"({len(raw)} bytes that do not parse)")
        try:
            check_request(request, max_prompt_chars)
        except BackendError as exc:
            return _Refused(short_message(exc))
        return request

    return decode


def _refusing(behavior: Any) -> Any:
    """``behavior`` that first answers a :class:`_Refused` request with INVALID_ARGUMENT."""

    def run(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Refused):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return behavior(request, context)

    pool = getattr(behavior, "experimental_thread_pool", None)
    if pool is not None:
        run.experimental_thread_pool = pool  # type: ignore[attr-defined]
    return run


def _on_pool(behavior: Any, pool: futures.ThreadPoolExecutor) -> Any:
    """Wrap a handler function so gRPC runs it on ``pool`` instead of the default pool.

    gRPC's sync server runs a handler on ``behavior.experimental_thread_pool`` when the
    function carries that attribute (grpcio >= 1.38; the pinned 1.85 does). A bound method
    cannot take attributes, hence the wrapper.
    """

    def run(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        return behavior(request_or_iterator, context)

    run.experimental_thread_pool = pool  # type: ignore[attr-defined]
    return run


def _rebuild(handler: Any, behavior: Any, deserializer: Any) -> Any:
    """The same handler (same arity and serializer) with another behavior and deserializer."""
    factory = _HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(
        behavior,
        request_deserializer=deserializer,
        response_serializer=handler.response_serializer,
    )


def _behavior(handler: Any) -> Any:
    return (handler.unary_unary or handler.unary_stream or handler.stream_unary
            or handler.stream_stream)


class DispatchInterceptor(grpc.ServerInterceptor):
    """Authentication and thread-pool routing, decided before a call is queued.

    * With a token set, every call must carry ``authorization: Bearer <token>``
      (constant-time compare), else UNAUTHENTICATED, answered on the control pool.
    * Health, Status and the gRPC health Check run on a small control pool of their own,
      so they answer at once however many generations are queued on the work pool
      (a thread waiting for the pipeline lock would otherwise hold every worker).
    * A refused call's message is never parsed; a unary request that does not parse, or
      breaks a limit of ``request_limits``, is INVALID_ARGUMENT before it queues.
    """

    def __init__(self, token: str, control_pool: futures.ThreadPoolExecutor,
                 observer: RpcObserver | None = None,
                 max_prompt_chars: int = DEFAULTS.max_prompt_chars) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self._control_pool = control_pool
        self._deny = _on_pool(_deny, control_pool)
        self._observer = observer  # request log line and metrics around unary calls
        self._max_prompt_chars = max_prompt_chars

    def _authorized(self, handler_call_details: Any) -> bool:
        if self._expected is None:
            return True
        given = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                break
        return hmac.compare_digest(given, self._expected)

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        behavior = _behavior(handler)
        deserializer = handler.request_deserializer
        if not self._authorized(handler_call_details):
            behavior, deserializer = self._deny, (lambda raw: _UNREAD)
        else:
            if method in CONTROL_METHODS:
                behavior = _on_pool(behavior, self._control_pool)
            if not handler.request_streaming and deserializer is not None:
                behavior = _refusing(behavior)
                deserializer = _decoder(deserializer, self._max_prompt_chars)
        if self._observer is not None and handler.unary_unary is not None:
            behavior = self._observer.wrap(method, behavior)
        return _rebuild(handler, behavior, deserializer)


def warm_imports(done: threading.Event) -> None:
    """Import the heavy libraries after the port is open; LoadModel waits on ``done``."""
    started = time.perf_counter()
    try:
        import torch  # noqa: F401 - first: its log handler is adopted before others import

        from diffusers_backend.serving.logs import adopt_library_loggers

        adopt_library_loggers()  # JSON logs: library warnings as JSON too
        import diffusers  # noqa: F401
        from diffusers import DiffusionPipeline  # noqa: F401 - resolves the lazy module

        # What every LoadModel needs next: the AutoPipeline tables (they pull in the SD, SDXL
        # and Flux classes and their text encoders) and the pipeline registry.
        from diffusers.pipelines import auto_pipeline  # noqa: F401

        from diffusers_backend.engine import engine  # noqa: F401
        from diffusers_backend.registry.store import REGISTRY

        REGISTRY.pipelines()
    except Exception:  # noqa: BLE001 - logged; LoadModel reports the import error itself
        log.exception("importing torch/diffusers failed")
    finally:
        log.info("torch and diffusers imported in %.1fs", time.perf_counter() - started)
        done.set()


def watch_parent(interval: float, on_orphaned: Callable[[], object],
                 original: int | None = None) -> None:
    """Exit when the host that started us is gone (our parent pid changes).

    ``original`` is the parent pid read at process start, so a host that dies while we
    are still starting up is noticed too.
    """
    original = os.getppid() if original is None else original

    def loop() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != original:
                log.warning("parent process %d is gone; shutting down", original)
                on_orphaned()
                return

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def build_server(settings: Settings, addr: str, observer: RpcObserver | None = None,
                 ) -> tuple[grpc.Server, Any, threading.Event, Any]:
    """Create (not start) the server with every service registered."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    import backend_pb2
    import backend_pb2_grpc
    from diffusers_backend.engine.runtime import ModelRuntime
    from diffusers_backend.serving.servicer import BackendServicer

    path_guard.set_allowed_roots(settings.allowed_paths)  # every layer's path checks
    imports_ready = threading.Event()
    runtime = ModelRuntime(settings, imports_ready)
    # Work pool, for LoadModel, Free and the generation RPCs: PYTHON_GRPC_MAX_WORKERS
    # threads plus DIFFUSERS_MAX_QUEUE more. Generations run one at a time on the pipeline
    # lock; the extra threads let requests that wait their turn be validated (and a bad
    # one refused) at once instead of sitting unread in the executor's queue. Threads are
    # started only when needed. Calls beyond that wait in the executor's queue.
    # Control pool: Health/Status/health Check and auth refusals, never behind work.
    control_pool = futures.ThreadPoolExecutor(max_workers=CONTROL_THREADS,
                                              thread_name_prefix="control")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers + settings.max_queue,
                                   thread_name_prefix="rpc"),
        interceptors=[DispatchInterceptor(settings.auth_token, control_pool,
                                          observer or RpcObserver(),
                                          settings.max_prompt_chars)],
        options=[
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            # What the host sends is paths and prompts: a few MiB at most.
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    backend_pb2_grpc.add_BackendServicer_to_server(BackendServicer(runtime), server)
    from diffusers_backend.serving.progress_service import SERVICE, add_progress_service

    add_progress_service(server)  # diffusers.v1.Progress: live progress (progress.proto)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("backend.Backend", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (
            backend_pb2.DESCRIPTOR.services_by_name["Backend"].full_name,
            SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    problem = bind_problem(addr)  # before gRPC, whose own error says only "Failed to bind"
    if problem is not None:
        raise OSError(cannot_listen_message(addr, problem))
    try:
        bound = server.add_insecure_port(addr)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(cannot_listen_message(addr))
    return server, runtime, imports_ready, health_servicer


def serve(addr: str) -> int:
    """Run the backend until SIGTERM/SIGINT or until orphaned; return the exit code."""
    parent_pid = os.getppid()  # read first: the host may die while we start up
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"diffusers backend: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    metrics = None
    if settings.metrics_addr:
        from diffusers_backend.serving.metrics import Metrics

        metrics = Metrics()
    try:
        server, runtime, imports_ready, health_servicer = build_server(
            settings, addr, RpcObserver(metrics))
        if metrics is not None:
            from diffusers_backend.serving.metrics import start_metrics

            url = start_metrics(metrics, runtime, settings.metrics_addr, settings.auth_token)
            log.info("metrics on %s%s", url,
                     " (bearer token required)" if settings.auth_token else "")
    except (OSError, RuntimeError) as exc:
        print(f"diffusers backend: {exc}", file=sys.stderr)
        return 1
    server.start()
    log.info("serving on %s (%s)", addr, settings)
    for warning in settings.warnings:
        log.warning("%s", warning)
    threading.Thread(target=warm_imports, args=(imports_ready,), name="warm-imports",
                     daemon=True).start()
    if settings.compel:
        from diffusers_backend.prompts import warn_if_compel_missing

        warn_if_compel_missing(True)

    stopping = threading.Event()

    def shutdown(reason: str) -> None:
        if stopping.is_set():
            return
        stopping.set()
        grace = settings.shutdown_grace if runtime.busy() else 0.0  # nothing running: now
        log.info("%s: finishing running requests (%s), then exiting", reason,
                 f"up to {grace:.0f}s" if grace else "none running")
        runtime.close()
        from diffusers_backend.engine.progress import HUB

        HUB.close()  # Watch streams end now rather than hold the grace period
        health_servicer.enter_graceful_shutdown()  # grpc health: NOT_SERVING from now on
        server.stop(grace)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: threading.Thread(
            target=shutdown, args=(signal.Signals(signum).name,), daemon=True).start())
    if settings.parent_watch:
        watch_parent(settings.parent_watch_interval, lambda: shutdown("orphaned"), parent_pid)
    server.wait_for_termination()
    log.info("stopped")
    # A torch operation may still run on the pipeline thread (its request was cancelled
    # at the end of the grace period): exit without waiting for it.
    exit_now(0)
    return 0
