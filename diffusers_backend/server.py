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
from concurrent import futures
from typing import Any

import grpc

from .settings import Settings, SettingsError, load_settings

log = logging.getLogger("diffusers_backend")
CONTROL_THREADS = 4  # Health/Status/Free always find a free thread, even while generating
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def configure_logging() -> None:
    level = os.environ.get("DIFFUSERS_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _deny(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid authorization bearer token")


class AuthInterceptor(grpc.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` on every call when a token is set."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        handler = continuation(handler_call_details)
        if handler is None or hmac.compare_digest(given, self._expected):
            return handler
        factory = _HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
        return factory(
            _deny,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def warm_imports(done: threading.Event) -> None:
    """Import the heavy libraries after the port is open; LoadModel waits on ``done``."""
    started = time.perf_counter()
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        from diffusers import DiffusionPipeline  # noqa: F401 - resolves the lazy module

        import diffusers_dynamic_loader  # noqa: F401

        from . import generation  # noqa: F401
    except Exception:  # noqa: BLE001 - logged; LoadModel reports the import error itself
        log.exception("importing torch/diffusers failed")
    finally:
        log.info("torch and diffusers imported in %.1fs", time.perf_counter() - started)
        done.set()


def watch_parent(interval: float, on_orphaned) -> None:
    """Exit when the host that started us is gone (our parent pid changes)."""
    original = os.getppid()

    def loop() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != original:
                log.warning("parent process %d is gone; shutting down", original)
                on_orphaned()
                return

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def build_server(settings: Settings, addr: str) -> tuple[grpc.Server, Any, threading.Event]:
    """Create (not start) the server with every service registered."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    import backend_pb2
    import backend_pb2_grpc

    from .runtime import ModelRuntime
    from .servicer import BackendServicer

    imports_ready = threading.Event()
    runtime = ModelRuntime(settings, imports_ready)
    interceptors = [AuthInterceptor(settings.auth_token)] if settings.auth_token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=settings.max_workers + CONTROL_THREADS, thread_name_prefix="rpc"
        ),
        interceptors=interceptors,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    backend_pb2_grpc.add_BackendServicer_to_server(BackendServicer(runtime), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("backend.Backend", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (
            backend_pb2.DESCRIPTOR.services_by_name["Backend"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    if server.add_insecure_port(addr) == 0:
        raise OSError(f"cannot listen on {addr}")
    return server, runtime, imports_ready


def serve(addr: str) -> int:
    """Run the backend until SIGTERM/SIGINT or until orphaned; return the exit code."""
    configure_logging()
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"diffusers backend: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        server, runtime, imports_ready = build_server(settings, addr)
    except (OSError, RuntimeError) as exc:
        print(f"diffusers backend: {exc}", file=sys.stderr)
        return 1
    server.start()
    log.info("serving on %s (%s)", addr, settings)
    threading.Thread(target=warm_imports, args=(imports_ready,), name="warm-imports",
                     daemon=True).start()
    if settings.compel:
        from .prompts import warn_if_compel_missing

        warn_if_compel_missing(True)

    stopping = threading.Event()

    def shutdown(reason: str) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("%s: finishing running requests (up to %.0fs), then exiting",
                 reason, settings.shutdown_grace)
        runtime.close()
        server.stop(settings.shutdown_grace)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: threading.Thread(
            target=shutdown, args=(signal.Signals(signum).name,), daemon=True).start())
    if settings.parent_watch:
        watch_parent(settings.parent_watch_interval, lambda: shutdown("orphaned"))
    server.wait_for_termination()
    log.info("stopped")
    return 0
