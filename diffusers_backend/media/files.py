"""Output paths checked before any work, and files written atomically: a reader sees the
old file or the complete new one, never a half-written PNG the host would serve.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import io
import logging
import os
import stat
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from PIL import Image

from diffusers_backend import path_guard
from diffusers_backend.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

log = logging.getLogger(__name__)
_TEMP_CHARS = 8  # tempfile's random part of a name
_TEMP_SUFFIXES = (".partial", ".partial.mp4", ".probe")

# --------------------------------------------------------------------------- outputs


def check_output_path(dst: str, *, field: str = "dst", probe: bool = True) -> Path:
    """Validate an output path before any expensive work, so a bad path fails fast.

    The path must be non-empty, inside the allowed folders (DIFFUSERS_ALLOWED_PATHS), not a
    folder nor a FIFO, socket or device (those are refused, never replaced), and its folder
    must exist. With ``probe`` a hidden temporary file is created and removed in that
    folder: permission bits cannot tell (root passes os.access everywhere, yet /proc or
    /sys refuse new files), only a real create can.
    """
    path_guard.check_syntax(dst, field, "file to write")
    path_guard.confine(dst, field)
    shown = path_guard.shown(dst)
    path = Path(os.path.abspath(dst))
    if dst.endswith(("/", os.sep)):
        raise InvalidArgument(f"{field} is a folder, not a file path: {shown}")
    existing = _existing(path, field, dst)
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise InvalidArgument(f"{field} is a folder, not a file path: {shown}")
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise InvalidArgument(f"{field} is a FIFO, socket or device, not a file this server "
                              f"may replace: {shown}")
    parent = path.parent
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        raise NotFound(f"output folder does not exist: {parent} ({field}={shown})") from None
    except NotADirectoryError:
        raise InvalidArgument(
            f"output folder is not a folder (a parent is a file): {parent} ({field}={shown})"
        ) from None
    except PermissionError:
        raise PermissionDenied(
            f"output folder cannot be reached (permission denied): {parent} ({field}={shown})"
        ) from None
    except OSError as exc:
        raise path_guard.os_error(exc, field, dst, "output folder", "reached") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"output folder is not a folder: {parent} ({field}={shown})")
    # os.access also reports a read-only file system (EROFS), even for root.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionDenied(f"output folder is not writable: {parent} ({field}={shown})")
    if probe:
        _probe_write(parent, path, field)
    return path


def _existing(path: Path, field: str, dst: str) -> os.stat_result | None:
    """``stat`` of what ``dst`` names now (links followed), None when nothing is there."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise path_guard.os_error(exc, field, dst, "file", "written") from None


def _probe_write(parent: Path, dst: Path, field: str) -> None:
    """Create and remove a hidden file in ``parent``; refuse with a clear status if we can't."""
    try:
        fd, tmp = _temp_in(parent, dst.name, ".probe")
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL):
            raise path_guard.os_error(exc, field, str(dst), "file", "written") from None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(
                f"no space left in the output folder: {parent} ({field}={dst})"
            ) from None
        raise PermissionDenied(
            f"output folder does not accept new files ({exc.strerror}): {parent} "
            f"({field}={dst})"
        ) from None
    _remove_quietly(tmp)
    os.close(fd)


@lru_cache(maxsize=1)
def _process_umask() -> int:
    """The process umask, read without os.umask's set-and-restore race where possible."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _final_mode(dst: Path) -> int:
    """Permissions for the new file: keep an existing file's read/write/execute bits, else
    0666 minus umask. Never setuid, setgid or sticky, whatever the old file had.

    mkstemp creates 0600, which the host (often another user) could not read.
    """
    try:
        return stat.S_IMODE(os.stat(dst).st_mode) & 0o777
    except OSError:
        return 0o666 & ~_process_umask()


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; best effort (some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _translate_os_error(exc: OSError, dst: Path, field: str) -> Exception:
    """Turn write-side OS errors into statuses a user can act on; others pass unchanged."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"no space left writing {field}: {dst} ({exc.strerror})")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"cannot write {field} (permission denied): {dst}")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(f"output folder does not exist: {dst.parent} ({field}={dst})")
    if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
        return path_guard.os_error(exc, field, str(dst), "file", "written")
    return exc


def _temp_in(folder: Path, name: str, suffix: str) -> tuple[int, str]:
    """A unique hidden temporary file next to the destination (same file system), locked
    (``flock``) for as long as its descriptor is open: a lock nobody holds marks a file
    that a killed write left behind."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=suffix)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # a file system without locks: the file is still ours
    return fd, tmp


def remove_leftovers(folder: Path, name: str) -> list[str]:
    """Remove ``.NAME.XXXXXXXX.partial`` (and ``.probe``) files a killed write left beside
    ``name``; return their names. A file whose lock is held belongs to a write in progress
    (in this process or another) and is kept."""
    removed: list[str] = []
    pattern = f".{glob.escape(name)}.{'[!.]' * _TEMP_CHARS}"
    for suffix in _TEMP_SUFFIXES:
        for leftover in glob.glob(os.path.join(glob.escape(str(folder)), pattern + suffix)):
            if _remove_if_abandoned(leftover):
                removed.append(os.path.basename(leftover))
    if removed:
        log.info("removed %d file(s) a stopped write left in %s: %s", len(removed), folder,
                 ", ".join(removed))
    return removed


def _remove_if_abandoned(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False  # gone, a link, or not ours to open
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # locked: a write in progress
    else:
        _remove_quietly(path)
        return True
    finally:
        os.close(fd)


def _publish(tmp: str, dst: Path) -> None:
    """chmod the finished temp file and atomically move it onto ``dst``."""
    os.chmod(tmp, _final_mode(dst))
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


def write_atomically(path: Path, suffix: str, write: Callable[[str], None]) -> None:
    """Let ``write`` fill a hidden temp file beside ``path``, fsync it, rename it onto ``path``.

    Readers see the old file or the complete new one, never a partial one; any failure
    removes the temp file and leaves an existing ``path`` untouched.
    """
    remove_leftovers(path.parent, path.name)
    try:
        fd, tmp = _temp_in(path.parent, path.name, suffix)
    except OSError as exc:
        raise _translate_os_error(exc, path, "dst") from exc
    _writing.add(tmp)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        translated = _translate_os_error(exc, path, "dst")
        if translated is exc:
            raise
        raise translated from exc
    except BaseException:
        _remove_quietly(tmp)
        raise
    finally:
        _writing.discard(tmp)
        os.close(fd)  # releases the lock


_writing: set[str] = set()  # temp files of writes in progress in this process


def remove_partial_files() -> list[str]:
    """Remove the temp files of writes still in progress (a hard exit is about to cut them
    short); return their paths."""
    removed = []
    for tmp in list(_writing):
        _remove_quietly(tmp)
        removed.append(tmp)
    return removed


def image_to_png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG in memory (for callers that need bytes, not a file)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_png_atomic(image: Image.Image, dst: str, compress_level: int = 1) -> None:
    """Write ``image`` as PNG at ``dst`` so readers see the old file or the new one only.

    The PNG is written to a hidden temp file in the same folder, fsynced and renamed
    over ``dst``. Any failure removes the temp file and leaves an existing ``dst``
    untouched. The format is PNG whatever ``dst``'s ending (the host uses ``*.tmp``).
    ``compress_level`` 1 (``DIFFUSERS_PNG_COMPRESSION``) encodes several times faster than
    zlib's default 6, for files a little larger; the pixels are the same.
    """
    path = check_output_path(dst, probe=False)
    write_atomically(path, ".partial",
                      lambda tmp: image.save(tmp, format="PNG", compress_level=compress_level))


