"""Our own error hierarchy, free of any transport.

Code anywhere in the backend raises one of these (or lets a library error escape). Each
class names the status it stands for as a plain word (``status``); only the serving layer
(:mod:`diffusers_backend.serving.status`) turns that into a gRPC status code, so loading,
tasks and the engine never import grpc.
"""

from __future__ import annotations

MAX_MESSAGE_CHARS = 400


class BackendError(Exception):
    """Base of errors whose message is written for the user who sent the request."""

    status: str = "INTERNAL"


class InvalidArgument(BackendError):
    """A request value is malformed or out of range."""

    status = "INVALID_ARGUMENT"


class NotFound(BackendError):
    """A file or model the request names does not exist."""

    status = "NOT_FOUND"


class FailedPrecondition(BackendError):
    """No model is loaded. Used for nothing else: LocalAI's distributed router reads this
    status as "model not loaded here" and reloads or drops the replica. A request that does
    not fit the loaded model is :class:`InvalidArgument`."""

    status = "FAILED_PRECONDITION"


class ResourceExhausted(BackendError):
    """Out of memory, or a request above a configured size limit."""

    status = "RESOURCE_EXHAUSTED"


class PermissionDenied(BackendError):
    """The server may not write or read a path it was asked to use."""

    status = "PERMISSION_DENIED"


class Unauthenticated(BackendError):
    """Missing or wrong bearer token."""

    status = "UNAUTHENTICATED"


class Cancelled(BackendError):
    """The client went away or its deadline passed; the work was stopped."""

    status = "CANCELLED"


class Unavailable(BackendError):
    """The server is shutting down."""

    status = "UNAVAILABLE"


class LoadError(BackendError):
    """LoadModel could not load the model; reported as ``Result(success=False)``."""

    status = "INVALID_ARGUMENT"


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


class DeadlineExceeded(BackendError):
    """The request cannot finish before its client's deadline (admission's estimate)."""

    status = "DEADLINE_EXCEEDED"
