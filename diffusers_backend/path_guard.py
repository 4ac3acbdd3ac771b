"""Every path a request or a model names, checked one way before anything opens it.

A path is user input. A FIFO, ``/dev/stdin`` or a socket blocks the thread that reads it
forever (the server wedges while Health still answers); a 300-character name or a symlink
loop is the user's mistake, not an internal error; and an operator may confine every read
and write to a few folders (``DIFFUSERS_ALLOWED_PATHS``). Media (inputs, outputs) and
loading (models, LoRAs, ControlNets, CLIP) all go through here, so the rules are the same.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from typing import BinaryIO

from diffusers_backend.errors import (
    BackendError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)

MAX_PATH_CHARS = 4096  # Linux PATH_MAX: longer is never a real path
_SHOWN_CHARS = 200  # how much of a path a message or log line echoes

# The folders reads and writes must resolve under; empty = anywhere. Set once at start-up
# (serving.server) from DIFFUSERS_ALLOWED_PATHS: every layer that touches a path reads the
# same value, without threading it through each call.
_allowed_roots: tuple[str, ...] = ()


def set_allowed_roots(roots: Iterable[str]) -> None:
    """Confine every path to ``roots`` (resolved now); an empty list lifts the confinement."""
    global _allowed_roots
    _allowed_roots = tuple(os.path.realpath(os.path.expanduser(r)) for r in roots if r)


def shown(path: str) -> str:
    """``path`` as messages and logs echo it: a huge value is cut, with its length noted."""
    if len(path) <= _SHOWN_CHARS:
        return path
    return f"{path[:_SHOWN_CHARS]}... ({len(path)} characters)"


def check_syntax(path: str, field: str, what: str = "file") -> None:
    """Empty, NUL-carrying or over-long paths are refused before any system call."""
    if not path or not path.strip():
        raise InvalidArgument(f"{field} is empty: give the path of the {what}")
    if "\x00" in path:
        raise InvalidArgument(f"{field} path contains a NUL byte: {shown(path)!r}")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidArgument(f"{field} path is {len(path)} characters long; a path has at most "
                              f"{MAX_PATH_CHARS}: {shown(path)}")


def _inside(real: str) -> bool:
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep)
               for root in _allowed_roots)


def confine(path: str, field: str) -> None:
    """PERMISSION_DENIED unless ``path`` resolves under an allowed folder.

    The answer is the same whether or not the file exists, so a caller cannot probe the
    disk outside the allowed folders.
    """
    if not _allowed_roots:
        return
    try:
        real = os.path.realpath(os.path.expanduser(path))
    except (OSError, ValueError):
        real = ""
    if not real or not _inside(real):
        raise PermissionDenied(f"{field} {shown(path)} is outside the folders this server may "
                               "use (DIFFUSERS_ALLOWED_PATHS)")


def os_error(exc: OSError, field: str, path: str, what: str = "file",
             action: str = "read") -> BackendError:
    """The status a user can act on for an OS error met on ``path``."""
    where = shown(path)
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(f"{field} {what} not found: {where}")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"{field} {what} cannot be {action} (permission denied): {where}")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"no space left for {field}: {where}")
    if code == errno.ENAMETOOLONG:
        return InvalidArgument(f"{field} path has a name too long for the file system: {where}")
    if code == errno.ELOOP:
        return InvalidArgument(f"{field} path has a symbolic link loop: {where}")
    if code == errno.EISDIR:
        return InvalidArgument(f"{field} is a folder, not a {what}: {where}")
    reason = exc.strerror or type(exc).__name__
    return InvalidArgument(f"{field} {what} cannot be {action} ({reason}): {where}")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def check_file(path: str, field: str, what: str = "file") -> os.stat_result:
    """A path that must be an existing regular file; refused with a fitting status if not.

    Only metadata is read (``stat``), never the file: a FIFO or a device is refused without
    being opened, so nothing can block.
    """
    check_syntax(path, field, what)
    confine(path, field)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_error(exc, field, path, what) from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{field} is {_kind(st.st_mode)}, not a regular file: "
                              f"{shown(path)}")
    return st


def check_folder(path: str, field: str, what: str = "folder") -> None:
    """A path that must be an existing folder."""
    check_syntax(path, field, what)
    confine(path, field)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_error(exc, field, path, what) from None
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{field} is {_kind(st.st_mode)}, not a {what}: {shown(path)}")


def open_file(path: str, field: str, what: str = "file") -> BinaryIO:
    """Open a regular file for reading, never blocking on a FIFO, socket or device.

    The open is non-blocking and ``fstat`` on the open file decides, so a path swapped for a
    FIFO between a check and the open is refused too.
    """
    check_file(path, field, what)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise os_error(exc, field, path, what) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InvalidArgument(f"{field} is {_kind(mode)}, not a regular file: "
                                  f"{shown(path)}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def lookup(path: str) -> os.stat_result | None:
    """``stat`` of an existing path, else None (missing, a loop, a name too long)."""
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None
