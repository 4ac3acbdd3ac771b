"""Validated image inputs and atomic image/video outputs.

Everything that touches a user-supplied file path lives here, so that every request
gets the same answers: a missing file is NOT_FOUND naming the path, a huge or broken
image is INVALID_ARGUMENT before any pixel is decoded, and an output file is either the
complete new result or left exactly as it was (never a half-written PNG the host serves).
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

# Raster formats a user upload can reasonably be in. An allowlist keeps plugins such as
# EPS (which shells out to Ghostscript) or exotic scientific formats away from user data.
_ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "PPM", "QOI", "TGA")

# Modes open_image knows how to turn into RGB / L.
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
_DIRECT_MODES = {"1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

# How much of a file is_inpaint_json reads to decide.
_SNIFF_BYTES = 4096


# --------------------------------------------------------------------------- inputs


def _image_formats() -> list[str]:
    """The allowlisted formats this Pillow build actually has plugins for."""
    Image.init()
    return [name for name in _ALLOWED_FORMATS if name in Image.OPEN]


def _stat_input(path: str, label: str) -> None:
    """Answer NOT_FOUND / PERMISSION_DENIED / INVALID_ARGUMENT before opening a path."""
    if not path or not path.strip():
        raise InvalidArgument(f"{label} is empty: give the path of an image file")
    if "\x00" in path:
        raise InvalidArgument(f"{label} path contains a NUL byte: {path!r}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"{label} image not found: {path}") from None
    except NotADirectoryError:
        raise NotFound(f"{label} image not found (a parent is not a folder): {path}") from None
    except PermissionError:
        raise PermissionDenied(
            f"{label} image cannot be read (permission denied): {path}"
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{label} is a folder, not an image file: {path}")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{label} is not a regular file: {path}")


def check_input_path(path: str, *, field: str = "src") -> None:
    """Cheap metadata check of an input image path (exists, a regular file, readable).

    Lets a request with a missing or wrong input be refused before it waits for the
    pipeline; decoding (size, format, mode checks) still happens in open_image.
    """
    _stat_input(path, field)
    if not os.access(path, os.R_OK):
        raise PermissionDenied(f"{field} image cannot be read (permission denied): {path}")


def _decode(source: str | bytes, label: str, shown: str, max_pixels: int) -> Image.Image:
    """Open, size-check from the header, then fully decode one image.

    ``source`` is a path or the encoded bytes; ``shown`` is what messages call it.
    The pixel limit is checked on the header's size, before any pixel data is read.
    """
    fp: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp, formats=_image_formats()) as im:
            width, height = im.size
            if width <= 0 or height <= 0:
                raise InvalidArgument(f"{label} image has an empty size {width}x{height}: {shown}")
            if width * height > max_pixels:
                raise InvalidArgument(
                    f"{label} image is {width}x{height} ({width * height} pixels), above the "
                    f"limit of {max_pixels} pixels: {shown}"
                )
            im.load()
            try:
                # Returns a copy, rotated when the EXIF Orientation tag asks for it.
                return ImageOps.exif_transpose(im)
            except Exception:
                # Orientation is cosmetic: a malformed EXIF block must not fail the
                # request, so keep the image as stored.
                return im.copy()
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires inside Image.open for sizes far above its default
        # limit, before our check above gets to run; its text names the pixel count.
        detail = str(exc).split(",")[0]
        raise InvalidArgument(
            f"{label} image is too large to decode safely ({detail}; this server accepts "
            f"at most {max_pixels} pixels): {shown}"
        ) from None
    except Image.UnidentifiedImageError:
        raise InvalidArgument(
            f"{label} is not an image file we can read (expected PNG, JPEG, WebP, GIF, BMP "
            f"or TIFF): {shown}"
        ) from None
    except PermissionError:
        raise PermissionDenied(
            f"{label} image cannot be read (permission denied): {shown}"
        ) from None
    except FileNotFoundError:
        raise NotFound(f"{label} image not found: {shown}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        # Truncated or corrupt data: Pillow reports these as OSError / SyntaxError / ...
        raise InvalidArgument(
            f"{label} image is damaged or truncated and cannot be decoded ({exc}): {shown}"
        ) from None


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """Scale 16-bit (or 32-bit int holding 16-bit data) grey down to 8 bits.

    Pillow's own convert() clips these to 255, which turns almost every pixel white.
    """
    arr = np.asarray(image, dtype=np.float64)
    scaled = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def _float_to_l(image: Image.Image) -> Image.Image:
    """Map a float image to 8-bit grey: 0..1 data is scaled, anything else clipped."""
    arr = np.asarray(image, dtype=np.float64)
    arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
    if arr.size and float(arr.max()) <= 1.0 and float(arr.min()) >= 0.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _to_mode(image: Image.Image, mode: str, background: int, label: str, shown: str) -> Image.Image:
    """Convert any supported mode to ``mode`` ("RGB" or "L").

    Transparent areas are flattened onto ``background`` (white for pictures, black for
    masks so that transparent means "keep"), instead of exposing whatever colour the
    encoder left under alpha 0.
    """
    src_mode = image.mode
    if src_mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_l(image)
    elif src_mode == "F":
        image = _float_to_l(image)
    elif src_mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif src_mode not in _ALPHA_MODES | _DIRECT_MODES:
        raise InvalidArgument(f"{label} image has an unsupported pixel mode {src_mode!r}: {shown}")

    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (background, background, background, 255))
        image = Image.alpha_composite(base, rgba)
    if image.mode != mode:
        image = image.convert(mode)
    return image


def open_image(path: str, *, field: str = "src", max_pixels: int) -> Image.Image:
    """Open a user-supplied image as RGB, refusing missing, huge or broken files clearly.

    EXIF orientation is applied so phone photos come out upright; transparency is
    flattened onto white.
    """
    _stat_input(path, field)
    image = _decode(path, field, path, max_pixels)
    return _to_mode(image, "RGB", 255, field, path)


def open_mask(path: str, *, field: str = "mask", max_pixels: int) -> Image.Image:
    """Open an inpainting mask as 8-bit grey ("L"); white marks the area to repaint.

    Transparency is flattened onto black, so a painted-on-transparent mask repaints
    only what was painted.
    """
    _stat_input(path, field)
    image = _decode(path, field, path, max_pixels)
    return _to_mode(image, "L", 0, field, path)


def is_inpaint_json(path: str) -> bool:
    """Cheaply tell the host's inpainting JSON apart from an uploaded image.

    True when the file's first non-blank character is ``{``. Unreadable or missing
    paths answer False, so the image opener reports them with the right status.
    """
    if not path or "\x00" in path:
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return False
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    return head.startswith(b"{")


def _b64_image_bytes(value: Any, key: str, src: str) -> bytes:
    """Decode one base64 (optionally ``data:...;base64,``-prefixed) JSON field."""
    if not isinstance(value, str):
        raise InvalidArgument(
            f'inpainting JSON field "{key}" must be a base64 string, got '
            f"{type(value).__name__}: {src}"
        )
    text = value.strip()
    if text[:5].lower() == "data:":
        header, sep, payload = text.partition(",")
        if not sep:
            raise InvalidArgument(
                f'inpainting JSON field "{key}" is a data URL without a comma: {src}'
            )
        if ";base64" not in header.lower():
            raise InvalidArgument(
                f'inpainting JSON field "{key}" is a data URL that is not base64-encoded: {src}'
            )
        text = payload
    text = "".join(text.split())  # line-wrapped base64 is common
    text = text.replace("-", "+").replace("_", "/")  # accept the URL-safe alphabet too
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f'inpainting JSON field "{key}" is not valid base64: {src}') from None
    if not data:
        raise InvalidArgument(f'inpainting JSON field "{key}" is empty: {src}')
    return data


def _read_inpaint_json(src: str, max_pixels: int) -> dict[str, Any]:
    """Read and parse the inpainting JSON file, with a size cap tied to the pixel limit."""
    # An encoded image is at most about raw RGBA size; base64 adds a third. Allow 2x that.
    max_bytes = 2 * ((4 * max_pixels * 4) // 3) + (1 << 20)
    try:
        size = os.path.getsize(src)
        if size > max_bytes:
            raise InvalidArgument(
                f"inpainting JSON is {size} bytes, more than the {max_bytes} bytes that "
                f"images of at most {max_pixels} pixels need: {src}"
            )
        with open(src, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise NotFound(f"src inpainting JSON not found: {src}") from None
    except PermissionError:
        raise PermissionDenied(
            f"src inpainting JSON cannot be read (permission denied): {src}"
        ) from None
    try:
        obj = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InvalidArgument(f"src inpainting JSON is not UTF-8 text: {src}") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"src inpainting JSON is not valid JSON ({exc.msg} at line {exc.lineno} "
            f"column {exc.colno}): {src}"
        ) from None
    except RecursionError:
        raise InvalidArgument(f"src inpainting JSON is nested too deeply: {src}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(
            f'src inpainting JSON must be an object with "image" and "mask_image", '
            f"got {type(obj).__name__}: {src}"
        )
    return obj


def load_inpaint_inputs(
    src: str, ref_images: Sequence[str], *, max_pixels: int
) -> tuple[Image.Image, Image.Image] | None:
    """Return ``(image RGB, mask L)`` for an inpainting request, or None for any other.

    The rule: a request is inpainting exactly when ``src`` is a JSON file (the host's
    inpainting endpoint always sends one). Image and mask come from its ``image`` and
    ``mask_image`` fields; a field that is missing or empty falls back to
    ``ref_images[0]`` (image) / ``ref_images[1]`` (mask) when two references were sent.
    A plain img2img request (``src`` an image, or empty) answers None.
    """
    if not src or not is_inpaint_json(src):
        return None
    obj = _read_inpaint_json(src, max_pixels)
    refs = [r for r in (ref_images or []) if r]
    have_refs = len(refs) >= 2

    def pick(key: str, index: int, as_mask: bool) -> Image.Image:
        value = obj.get(key)
        if value is not None and value != "":
            data = _b64_image_bytes(value, key, src)
            label = f'inpainting JSON field "{key}"'
            image = _decode(data, label, src, max_pixels)
            mode, background = ("L", 0) if as_mask else ("RGB", 255)
            return _to_mode(image, mode, background, label, src)
        if have_refs:
            field = f"ref_images[{index}]"
            if as_mask:
                return open_mask(refs[index], field=field, max_pixels=max_pixels)
            return open_image(refs[index], field=field, max_pixels=max_pixels)
        raise InvalidArgument(
            f'inpainting JSON has no "{key}" field and ref_images does not hold '
            f"[image, mask] to fall back on: {src}"
        )

    image = pick("image", 0, as_mask=False)
    mask = pick("mask_image", 1, as_mask=True)
    if image.size != mask.size:
        raise InvalidArgument(
            f"inpainting image is {image.size[0]}x{image.size[1]} but the mask is "
            f"{mask.size[0]}x{mask.size[1]}; they must be the same size ({src})"
        )
    return image, mask


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


def _frame_to_uint8(frame: Any, index: int) -> np.ndarray:
    """One frame (PIL image or HxW[xC] array, float 0..1 or uint8) as HxWx3 uint8."""
    if isinstance(frame, Image.Image):
        if frame.mode != "RGB":
            frame = frame.convert("RGB")
        return np.asarray(frame, dtype=np.uint8)
    arr = np.asarray(frame)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind in "ui":
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        raise InvalidArgument(f"video frame {index} has unsupported dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise InvalidArgument(
            f"video frame {index} has shape {arr.shape}; expected HxW, HxWx1, HxWx3 or HxWx4"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidArgument(f"video frame {index} is empty ({arr.shape[1]}x{arr.shape[0]})")
    return np.ascontiguousarray(arr)


def _even_frames(frames: Iterable[Any]) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames padded (edge pixels repeated) to even width and height.

    H.264 with yuv420p needs even dimensions; padding by at most one pixel keeps the
    picture undistorted, unlike rescaling to a multiple of 16.
    """
    first_shape: tuple[int, ...] | None = None
    for index, frame in enumerate(frames):
        arr = _frame_to_uint8(frame, index)
        if first_shape is None:
            first_shape = arr.shape
        elif arr.shape != first_shape:
            raise InvalidArgument(
                f"video frame {index} is {arr.shape[1]}x{arr.shape[0]} but frame 0 is "
                f"{first_shape[1]}x{first_shape[0]}; all frames must be the same size"
            )
        pad_h, pad_w = arr.shape[0] % 2, arr.shape[1] % 2
        if pad_h or pad_w:
            arr = np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        yield arr


def _frame_sequence(frames: Any) -> Sequence[Any]:
    """Accept a list of frames or one (frames, H, W[, C]) array, as pipelines return."""
    if isinstance(frames, np.ndarray):
        if frames.ndim == 5 and frames.shape[0] == 1:
            frames = frames[0]
        if frames.ndim not in (3, 4):
            raise InvalidArgument(
                f"video frames array has shape {frames.shape}; expected (frames, H, W[, C])"
            )
        return list(frames)
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable):
        raise InvalidArgument(f"video frames must be a list of images, got {type(frames).__name__}")
    return list(frames)


def write_video_atomic(frames: Sequence[Any] | np.ndarray, dst: str, fps: int,
                       audio: Any = None, sample_rate: int = 0) -> None:
    """Encode frames as an H.264 MP4 at ``dst``, atomically like write_png_atomic.

    ffmpeg picks the container from the file name, so the temp file ends in ``.mp4``
    whatever ``dst`` is called; it is renamed onto ``dst`` only once complete. With
    ``audio`` (a waveform, see :func:`audio_samples`) the file gets an AAC track at
    ``sample_rate`` beside the video (muxed with PyAV).
    """
    path = check_output_path(dst, probe=False)
    seq = _frame_sequence(frames)
    if not seq:
        raise InvalidArgument("no video frames to write")
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or fps < 1:
        raise InvalidArgument(f"fps must be a positive whole number, got {fps!r}")
    if audio is not None:
        samples = audio_samples(audio)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
                or not 1000 <= sample_rate <= 384_000:
            raise InvalidArgument(f"audio sample rate must be 1000..384000 Hz, got {sample_rate!r}")
        _write_atomically(path, ".partial.mp4",
                          lambda tmp: _mux_with_audio(tmp, seq, int(fps), samples,
                                                      int(sample_rate)))
        return

    import imageio.v2 as iio  # lazy: pulls in the ffmpeg plugin only for video

    def encode(tmp: str) -> None:
        writer = iio.get_writer(
            tmp,
            format="FFMPEG",
            mode="I",
            fps=int(fps),
            codec="libx264",
            pixelformat="yuv420p",
            quality=7,
            macro_block_size=1,  # we pad to even sizes ourselves; no rescaling
            output_params=["-movflags", "+faststart"],
            ffmpeg_log_level="error",
        )
        try:
            for arr in _even_frames(seq):
                writer.append_data(arr)
        finally:
            writer.close()

    _write_atomically(path, ".partial.mp4", encode)


def audio_samples(audio: Any) -> np.ndarray:
    """A waveform as a float32 (channels, samples) array in -1..1, at most 2 channels.

    Accepts what audio-video pipelines return for one video: a torch tensor or numpy array
    shaped (samples,), (channels, samples) or (samples, channels), or a batch of one.
    """
    if hasattr(audio, "detach"):  # a torch tensor (bf16 has no numpy dtype: go via float)
        audio = audio.detach().float().cpu().numpy()
    arr = np.asarray(audio)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "fiu":
        raise InvalidArgument(f"audio has shape {arr.shape} and dtype {arr.dtype}; expected a "
                              "waveform of (channels, samples)")
    if arr.shape[0] > arr.shape[1]:  # (samples, channels)
        arr = arr.T
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.ascontiguousarray(np.clip(arr[:2], -1.0, 1.0))


def _mux_with_audio(tmp: str, frames: Sequence[Any], fps: int, samples: np.ndarray,
                    sample_rate: int) -> None:
    """Write H.264 video (yuv420p, ``fps``) and AAC audio into one MP4 with PyAV."""
    from fractions import Fraction

    import av

    layout = "stereo" if samples.shape[0] == 2 else "mono"
    with av.open(tmp, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        video = container.add_stream("libx264", rate=Fraction(fps, 1))
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "18"}
        sound = container.add_stream("aac", rate=sample_rate, layout=layout)
        for index, arr in enumerate(_even_frames(frames)):
            if index == 0:
                video.height, video.width = arr.shape[:2]
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        # Planar float in, the encoder's own format and frame size out.
        resampler = av.AudioResampler(format=sound.codec_context.format or "fltp",
                                      layout=layout, rate=sample_rate,
                                      frame_size=sound.codec_context.frame_size or 1024)
        source = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        source.sample_rate = sample_rate
        source.pts = 0
        for frame in [*resampler.resample(source), *resampler.resample(None)]:
            container.mux(sound.encode(frame))
        container.mux(sound.encode())


# --------------------------------------------------------------------------- upscale


def lanczos_upscale(image: Image.Image, scale: int, *, max_pixels: int) -> Image.Image:
    """Resize by an integer factor with Lanczos; scale 0 means the default of 2.

    The result size is checked against ``max_pixels`` from the sizes alone, so an
    absurd scale is refused instantly instead of allocating gigabytes.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)):
        raise InvalidArgument(f"scale must be a whole number, got {scale!r}")
    scale = int(scale)
    if scale < 0:
        raise InvalidArgument(
            f"scale must be 0 (default 2) or a positive whole number, got {scale}"
        )
    if scale == 0:
        scale = 2
    width, height = image.size
    new_w, new_h = width * scale, height * scale
    if new_w * new_h > max_pixels:
        raise InvalidArgument(
            f"upscaling {width}x{height} by {scale} gives {new_w}x{new_h} "
            f"({new_w * new_h} pixels), above the limit of {max_pixels} pixels; "
            f"use a smaller scale"
        )
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGB")
    if scale == 1:
        return image.copy()
    return image.resize((new_w, new_h), Image.Resampling.LANCZOS)


__all__ = [
    "audio_samples",
    "check_input_path",
    "check_output_path",
    "image_to_png_bytes",
    "is_inpaint_json",
    "lanczos_upscale",
    "load_inpaint_inputs",
    "open_image",
    "open_mask",
    "write_png_atomic",
    "write_video_atomic",
]
