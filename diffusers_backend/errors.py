"""Our own error hierarchy and the single place that maps exceptions to gRPC statuses.

Code anywhere in the backend raises one of these (or lets a library error escape);
only :func:`status_for` decides which gRPC status and message the host sees. That way a
host never gets UNKNOWN or a traceback, and the log still gets the full story.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import grpc

MAX_MESSAGE_CHARS = 400


class BackendError(Exception):
    """Base of errors whose message is written for the user who sent the request."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(BackendError):
    """A request value is malformed or out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(BackendError):
    """A file or model the request names does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(BackendError):
    """No model is loaded. Used for nothing else: LocalAI's distributed router reads this
    status as "model not loaded here" and reloads or drops the replica. A request that does
    not fit the loaded model is :class:`InvalidArgument`."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(BackendError):
    """Out of memory, or a request above a configured size limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDenied(BackendError):
    """The server may not write or read a path it was asked to use."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(BackendError):
    """Missing or wrong bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Cancelled(BackendError):
    """The client went away or its deadline passed; the work was stopped."""

    code = grpc.StatusCode.CANCELLED


class Unavailable(BackendError):
    """The server is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE


class Internal(BackendError):
    """A failure inside the pipeline that the user cannot fix by changing the request."""

    code = grpc.StatusCode.INTERNAL


class LoadError(BackendError):
    """LoadModel could not load the model; reported as ``Result(success=False)``."""

    code = grpc.StatusCode.INVALID_ARGUMENT


def is_out_of_memory(exc: BaseException) -> bool:
    """True for host or device OOM, without importing torch to check."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    if name in {"OutOfMemoryError", "OutOfResources"}:
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def short_message(exc: BaseException) -> str:
    """First line of an exception's text, trimmed: what a user can read in a status."""
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0].strip()
    if len(first) > MAX_MESSAGE_CHARS:
        first = first[: MAX_MESSAGE_CHARS - 3] + "..."
    return first


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map any exception to the (status code, message) the host will see."""
    if isinstance(exc, BackendError):
        return exc.code, short_message(exc)
    if is_out_of_memory(exc):
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "out of memory while generating; try a smaller size, fewer frames, "
            "or enable low_vram / attention slicing",
        )
    if isinstance(exc, FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND, f"file not found: {exc.filename or short_message(exc)}"
    if isinstance(exc, PermissionError):
        return grpc.StatusCode.PERMISSION_DENIED, f"permission denied: {exc.filename or ''}"
    if isinstance(exc, (ValueError, TypeError)):
        return grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {short_message(exc)}"
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {short_message(exc)}"


# The client cancels when its own deadline fires; the server's copy of that deadline
# arrived a little later (transit), so it still shows a sliver of time left.
_DEADLINE_SLACK_S = 0.25


def _cancel_reason(context: grpc.ServicerContext) -> str:
    """Tell a passed deadline from a client that hung up, for the log line."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= _DEADLINE_SLACK_S:
        return "deadline passed"
    return "client cancelled"


def grpc_method(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a servicer method: any exception becomes a fitting gRPC status, logged once.

    Every servicer method goes through it; the only other ``context.abort`` is the auth
    interceptor's UNAUTHENTICATED (server.py), which answers before a method runs.
    """
    log = logging.getLogger("diffusers_backend.rpc")

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - the one catch-all, by design
            code, message = status_for(exc)
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED):
                log.error("%s failed: %s", method.__name__, message, exc_info=exc)
            elif code is grpc.StatusCode.CANCELLED:
                why = _cancel_reason(context)
                log.warning("%s cancelled (%s), work stopped: %s", method.__name__, why,
                            message)
            else:
                log.info("%s refused (%s): %s", method.__name__, code.name, message)
            context.abort(code, message)

    return wrapper
