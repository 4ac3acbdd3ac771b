"""Validated image inputs: uploads, masks and the host's inpainting JSON.

A missing file is NOT_FOUND naming the path, a huge or broken image is INVALID_ARGUMENT
before any pixel is decoded, and only raster formats on an allowlist are opened.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from diffusers_backend import path_guard
from diffusers_backend.errors import BackendError, InvalidArgument, NotFound, PermissionDenied
from diffusers_backend.media import inline
from diffusers_backend.settings import DEFAULTS

# Raster formats a user upload can reasonably be in. An allowlist keeps plugins such as
# EPS (which shells out to Ghostscript) or exotic scientific formats away from user data.
_ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "PPM", "QOI", "TGA")

# Modes open_image knows how to turn into RGB / L.
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
_DIRECT_MODES = {"1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

DEFAULT_MAX_INPAINT_JSON_BYTES = DEFAULTS.max_inpaint_json_bytes
# How much of a file is_inpaint_json reads to decide.
_SNIFF_BYTES = 4096


# --------------------------------------------------------------------------- inputs


def _image_formats() -> list[str]:
    """The allowlisted formats this Pillow build actually has plugins for."""
    Image.init()
    return [name for name in _ALLOWED_FORMATS if name in Image.OPEN]


def _stat_input(path: str, label: str) -> None:
    """NOT_FOUND / PERMISSION_DENIED / INVALID_ARGUMENT before anything opens a path."""
    path_guard.check_file(path, label, "image")


def check_input_path(path: str, *, field: str = "src") -> None:
    """Cheap metadata check of an input image path (exists, a regular file, readable).

    Lets a request with a missing or wrong input be refused before it waits for the
    pipeline; decoding (size, format, mode checks) still happens in open_image.
    """
    if inline.inline_bytes(path, field) is not None:
        return  # an inline image names no path; open_image decodes it
    _stat_input(path, field)
    if not os.access(path, os.R_OK):
        raise PermissionDenied(
            f"{field} image cannot be read (permission denied): {path_guard.shown(path)}")


def _decode(source: str | bytes, label: str, shown: str, max_pixels: int) -> Image.Image:
    """Open, size-check from the header, then fully decode one image.

    ``source`` is a path or the encoded bytes; ``shown`` is what messages call it.
    The pixel limit is checked on the header's size, before any pixel data is read.
    """
    if isinstance(source, str):
        data = inline.inline_bytes(source, label)
        if data is not None:  # a data: URI or bare base64: same decoder, caps and errors
            shown = inline.shown(source, data)
            source = data
    try:
        fp: Any = (io.BytesIO(source) if isinstance(source, bytes)
                   else path_guard.open_file(source, label, "image"))
    except FileNotFoundError:
        raise NotFound(f"{label} image not found: {shown}") from None
    with fp:
        return _decode_open(fp, label, shown, max_pixels)


def _decode_open(fp: Any, label: str, shown: str, max_pixels: int) -> Image.Image:
    """:func:`_decode` on an open file."""
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
                turned: Image.Image = ImageOps.exif_transpose(im)
                return turned
            except Exception:
                # Orientation is cosmetic: a malformed EXIF block must not fail the
                # request, so keep the image as stored.
                kept: Image.Image = im.copy()
                return kept
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires inside Image.open for sizes far above its default
        # limit, before our check above gets to run; its text names the pixel count.
        detail = str(exc).split(",")[0]
        raise InvalidArgument(
            f"{label} image is too large to decode safely ({detail}; this server accepts "
            f"at most {max_pixels} pixels): {shown}"
        ) from None
    except UnidentifiedImageError:
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
    image = _decode(path, field, path_guard.shown(path), max_pixels)
    return _to_mode(image, "RGB", 255, field, _shown(path, field))


def open_mask(path: str, *, field: str = "mask", max_pixels: int) -> Image.Image:
    """Open an inpainting mask as 8-bit grey ("L"); white marks the area to repaint.

    Transparency is flattened onto black, so a painted-on-transparent mask repaints
    only what was painted.
    """
    image = _decode(path, field, path_guard.shown(path), max_pixels)
    return _to_mode(image, "L", 0, field, _shown(path, field))


def _shown(value: str, field: str) -> str:
    """How messages name a path or an inline image."""
    data = inline.inline_bytes(value, field)
    return path_guard.shown(value) if data is None else inline.shown(value, data)


def is_inpaint_json(path: str) -> bool:
    """Cheaply tell the host's inpainting JSON apart from an uploaded image.

    True when the file's first non-blank character is ``{``. Unreadable or missing
    paths answer False, so the image opener reports them with the right status.
    """
    try:
        data = inline.inline_bytes(path, "src")
        if data is not None:
            head = data[:_SNIFF_BYTES]
        else:
            with path_guard.open_file(path, "src") as fh:
                head = fh.read(_SNIFF_BYTES)
    except (BackendError, OSError):
        return False  # the image opener reports it with the right status
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


def _read_inpaint_json(src: str, max_bytes: int) -> dict[str, Any]:
    """Read and parse the inpainting JSON file, refusing one above ``max_bytes`` unread.

    The host also sends the image and mask as files (ref_images); the JSON repeats them in
    base64, so a modest cap loses nothing while a huge file cannot take gigabytes to parse.
    """
    shown = _shown(src, "src")
    data = inline.inline_bytes(src, "src")
    if data is not None and len(data) > max_bytes:
        raise InvalidArgument(f"inpainting JSON is {len(data)} bytes, above the limit of "
                              f"{max_bytes} (DIFFUSERS_MAX_INPAINT_JSON_BYTES): {shown}")
    with (io.BytesIO(data) if data is not None
          else path_guard.open_file(src, "src", "inpainting JSON")) as fh:
        size = len(data) if data is not None else os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise InvalidArgument(
                f"inpainting JSON is {size} bytes, above the limit of {max_bytes} "
                f"(DIFFUSERS_MAX_INPAINT_JSON_BYTES): {shown}")
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise InvalidArgument(f"inpainting JSON grew past the limit of {max_bytes} bytes "
                              f"(DIFFUSERS_MAX_INPAINT_JSON_BYTES) while read: {shown}")
    try:
        obj = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InvalidArgument(f"src inpainting JSON is not UTF-8 text: {shown}") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"src inpainting JSON is not valid JSON ({exc.msg} at line {exc.lineno} "
            f"column {exc.colno}): {shown}"
        ) from None
    except RecursionError:
        raise InvalidArgument(f"src inpainting JSON is nested too deeply: {shown}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(
            f'src inpainting JSON must be an object with "image" and "mask_image", '
            f"got {type(obj).__name__}: {shown}"
        )
    return obj


def load_inpaint_inputs(
    src: str, ref_images: Sequence[str], *, max_pixels: int,
    max_json_bytes: int = DEFAULT_MAX_INPAINT_JSON_BYTES,
) -> tuple[Image.Image, Image.Image] | None:
    """Return ``(image RGB, mask L)`` for an inpainting request, or None for any other; a mask
    of another size is resized (bilinear) to the image's.

    The rule: a request is inpainting exactly when ``src`` is a JSON file (the host's
    inpainting endpoint always sends one). Image and mask come from its ``image`` and
    ``mask_image`` fields; a field that is missing or empty falls back to
    ``ref_images[0]`` (image) / ``ref_images[1]`` (mask) when two references were sent.
    A plain img2img request (``src`` an image, or empty) answers None.
    """
    if not src or not is_inpaint_json(src):
        return None
    obj = _read_inpaint_json(src, max_json_bytes)
    where = _shown(src, "src")
    refs = [r for r in (ref_images or []) if r]
    have_refs = len(refs) >= 2

    def pick(key: str, index: int, as_mask: bool) -> Image.Image:
        value = obj.get(key)
        if value is not None and value != "":
            data = _b64_image_bytes(value, key, where)
            label = f'inpainting JSON field "{key}"'
            image = _decode(data, label, where, max_pixels)
            mode, background = ("L", 0) if as_mask else ("RGB", 255)
            return _to_mode(image, mode, background, label, where)
        if have_refs:
            field = f"ref_images[{index}]"
            if as_mask:
                return open_mask(refs[index], field=field, max_pixels=max_pixels)
            return open_image(refs[index], field=field, max_pixels=max_pixels)
        raise InvalidArgument(
            f'inpainting JSON has no "{key}" field and ref_images does not hold '
            f"[image, mask] to fall back on: {where}"
        )

    image = pick("image", 0, as_mask=False)
    mask = pick("mask_image", 1, as_mask=True)
    if image.size != mask.size:
        # Masks are often drawn at another resolution: stretch it over the picture.
        mask = mask.resize(image.size, Image.Resampling.BILINEAR)
    return image, mask

