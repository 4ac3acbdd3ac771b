"""Output paths checked before any work, and files written atomically: a reader sees the
old file or the complete new one, never a half-written PNG the host would serve.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from PIL import Image

from diffusers_backend.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

# --------------------------------------------------------------------------- outputs


def check_output_path(dst: str, *, field: str = "dst", probe: bool = True) -> Path:
    """Validate an output path before any expensive work, so a bad path fails fast.

    The path must be non-empty and not a folder, and its folder must exist. With
    ``probe`` a hidden temporary file is created and removed in that folder: permission
    bits cannot tell (root passes os.access everywhere, yet /proc or /sys refuse new
    files), only a real create can.
    """
    if not dst or not dst.strip():
        raise InvalidArgument(f"{field} is empty: give the path of the file to write")
    if "\x00" in dst:
        raise InvalidArgument(f"{field} path contains a NUL byte: {dst!r}")
    path = Path(os.path.abspath(dst))
    if dst.endswith(("/", os.sep)) or path.is_dir():
        raise InvalidArgument(f"{field} is a folder, not a file path: {dst}")
    parent = path.parent
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        raise NotFound(f"output folder does not exist: {parent} ({field}={dst})") from None
    except NotADirectoryError:
        raise InvalidArgument(
            f"output folder is not a folder (a parent is a file): {parent} ({field}={dst})"
        ) from None
    except PermissionError:
        raise PermissionDenied(
            f"output folder cannot be reached (permission denied): {parent} ({field}={dst})"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"output folder is not a folder: {parent} ({field}={dst})")
    # os.access also reports a read-only file system (EROFS), even for root.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionDenied(f"output folder is not writable: {parent} ({field}={dst})")
    if probe:
        _probe_write(parent, path, field)
    return path


def _probe_write(parent: Path, dst: Path, field: str) -> None:
    """Create and remove a hidden file in ``parent``; refuse with a clear status if we can't."""
    try:
        fd, tmp = _temp_in(parent, dst.name, ".probe")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(
                f"no space left in the output folder: {parent} ({field}={dst})"
            ) from None
        raise PermissionDenied(
            f"output folder does not accept new files ({exc.strerror}): {parent} "
            f"({field}={dst})"
        ) from None
    os.close(fd)
    _remove_quietly(tmp)


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
    """Permissions for the new file: keep an existing file's, else 0666 minus umask.

    mkstemp creates 0600, which the host (often another user) could not read.
    """
    try:
        return stat.S_IMODE(os.stat(dst).st_mode)
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
    return exc


def _temp_in(folder: Path, name: str, suffix: str) -> tuple[int, str]:
    """A unique hidden temporary file next to the destination (same file system)."""
    return tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=suffix)


def _publish(tmp: str, dst: Path) -> None:
    """chmod the finished temp file and atomically move it onto ``dst``."""
    os.chmod(tmp, _final_mode(dst))
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


def _write_atomically(path: Path, suffix: str, write: Callable[[str], None]) -> None:
    """Let ``write`` fill a hidden temp file beside ``path``, fsync it, rename it onto ``path``.

    Readers see the old file or the complete new one, never a partial one; any failure
    removes the temp file and leaves an existing ``path`` untouched.
    """
    try:
        fd, tmp = _temp_in(path.parent, path.name, suffix)
        os.close(fd)
    except OSError as exc:
        raise _translate_os_error(exc, path, "dst") from exc
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
    _write_atomically(path, ".partial",
                      lambda tmp: image.save(tmp, format="PNG", compress_level=compress_level))


