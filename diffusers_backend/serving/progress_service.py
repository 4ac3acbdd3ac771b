"""The ``diffusers.v1.Progress`` service (progress.proto): ``Watch`` streams the events of the
live progress hub (``engine.progress``) to a client until it goes away.

Each stream runs on a thread of its own pool (``WATCH_THREADS``, started as needed), never
on the work pool, so watchers can never hold a generation's thread; the same interceptor
authenticates it. A stream ends when its client cancels or the server shuts down; one that
names a ``dst`` also ends after that request's last event (done, failed or cancelled), so
``grpcurl`` and the client can follow one request and return.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

import progress_pb2
from diffusers_backend.engine.progress import ENDS, HUB, Event, Hub

SERVICE = "diffusers.v1.Progress"
WATCH_THREADS = 512  # concurrent Watch streams; threads start only when needed
POLL_S = 0.5  # how often an idle stream checks that its client is still there


def to_message(event: Event, previews: bool) -> Any:
    """A hub event as a ``ProgressEvent`` (its preview only for a watcher that asked)."""
    return progress_pb2.ProgressEvent(
        request_id=event.request_id, dst=event.dst, stage=event.stage, kind=event.kind,
        step=event.step, steps=event.steps, elapsed_s=event.elapsed_s, eta_s=event.eta_s,
        queue_position=event.queue_position, message=event.message,
        preview_png=event.preview_png if previews else b"")


def make_watch(hub: Hub) -> Any:
    """The ``Watch`` behaviour over ``hub``."""

    def watch(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        watcher = hub.watch(request.dst, request.previews)
        context.add_callback(watcher.close)  # wakes the stream when the client goes
        # Headers now: a client that waits for them knows it is registered, and may send the
        # request it wants to follow without missing its first events.
        context.send_initial_metadata(())
        try:
            # Requests already waiting or running, as they stand now.
            for current in hub.snapshot():
                if watcher.wants(current.dst):
                    yield to_message(current, request.previews)
            while context.is_active() and not watcher.closed:
                event = watcher.get(POLL_S)
                if event is not None:
                    yield to_message(event, request.previews)
                    if request.dst and event.stage in ENDS:
                        return  # the request it follows has ended
        finally:
            hub.unwatch(watcher)

    return watch


def add_progress_service(server: grpc.Server, hub: Hub = HUB) -> futures.ThreadPoolExecutor:
    """Register ``Progress`` on ``server``; its streams run on the returned pool."""
    pool = futures.ThreadPoolExecutor(max_workers=WATCH_THREADS, thread_name_prefix="watch")
    behavior = make_watch(hub)
    behavior.experimental_thread_pool = pool
    handler = grpc.unary_stream_rpc_method_handler(
        behavior, request_deserializer=progress_pb2.WatchRequest.FromString,
        response_serializer=progress_pb2.ProgressEvent.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Watch": handler}),))
    return pool
