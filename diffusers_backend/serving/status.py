"""The single place that maps any exception to the gRPC status and message a host sees.

Errors are raised transport-free (:mod:`diffusers_backend.errors`); this module, part of
the serving layer, decides the status code, so a host never gets UNKNOWN or a traceback,
and the log still gets the full story.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable
from typing import Any

import grpc

from diffusers_backend.errors import BackendError, is_out_of_memory, short_message
from diffusers_backend.path_guard import os_error

# OS errors that say what is wrong with a path a request named (see path_guard.os_error)
PATH_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR,
                         errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map any exception to the (status code, message) the host will see."""
    if isinstance(exc, BackendError):
        return grpc.StatusCode[exc.status], short_message(exc)
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
    if isinstance(exc, OSError) and exc.errno in PATH_ERRNOS:
        # a path the request named (too long, a link loop, no space, read-only...), met
        # deep inside a library: the user's to fix, not ours
        error = os_error(exc, "path", str(exc.filename or ""))
        return grpc.StatusCode[error.status], short_message(error)
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
