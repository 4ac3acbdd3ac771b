"""Images sent inline instead of as a path: ``data:`` URIs and bare base64.

LocalAI's host turns inline images into temporary files before it calls us, but grpcurl
users and clients that call the backend directly send ``data:image/png;base64,...`` (or the
bare base64) where a path would go. Such a value is decoded here, in memory, and then goes
through the same decoder, pixel cap and errors as a file; it never touches the path guard
because it names no path.

Bare base64 counts as inline only when it is unambiguous: long enough, valid base64, and
decoding to bytes that start like an image (or, for ``src``, like the inpainting JSON).
"""

from __future__ import annotations

import base64
import binascii

from diffusers_backend.errors import InvalidArgument

# Magic numbers of the raster formats media.inputs opens (and "{" for the inpainting JSON).
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
          b"MM\x00*", b"RIFF", b"\x00\x00\x00", b"qoif", b"P6", b"P5", b"{")
# Request fields that may carry an inline image instead of a path, and their length cap
# (the pixel cap still applies after decoding, as for files).
IMAGE_FIELDS = frozenset({"src", "ref_images", "start_image", "end_image"})
MAX_INLINE_CHARS = 64 * 1024 * 1024
# Shorter strings are paths (or garbage), never a whole image.
_MIN_BARE_CHARS = 32


def is_data_uri(value: str) -> bool:
    return value[:5].lower() == "data:"


def _b64decode(text: str) -> bytes:
    """Strict base64 (standard or URL-safe alphabet, line breaks and missing padding allowed)."""
    text = "".join(text.split()).replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    return base64.b64decode(text, validate=True)


def may_be_inline(value: str) -> bool:
    """Cheap test: could ``value`` be an inline image (so a path's length cap is wrong)?"""
    return is_data_uri(value) or (len(value) >= _MIN_BARE_CHARS
                                  and value.lstrip()[:1] not in ("/", ".", "~"))


def _bare_base64(value: str) -> bytes | None:
    """The bytes of ``value`` when it is unambiguously bare base64 of an image, else None."""
    if not may_be_inline(value):
        return None
    try:
        data = _b64decode(value)
    except (binascii.Error, ValueError):
        return None
    return data if data.startswith(_MAGIC) else None


def inline_bytes(value: str, label: str) -> bytes | None:
    """The encoded bytes a request field carries inline, or None when it names a path.

    A ``data:`` URI that is not base64 or does not decode is INVALID_ARGUMENT naming
    ``label``; bare base64 is taken only when unambiguous (see the module docstring).
    """
    if not value:
        return None
    if not is_data_uri(value):
        return _bare_base64(value)
    header, sep, payload = value.partition(",")
    if not sep:
        raise InvalidArgument(f"{label} is a data: URI without a comma")
    if ";base64" not in header.lower():
        raise InvalidArgument(f"{label} is a data: URI that is not base64-encoded ({header})")
    try:
        data = _b64decode(payload)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{label} is a data: URI whose base64 does not decode") from None
    if not data:
        raise InvalidArgument(f"{label} is an empty data: URI")
    return data


def shown(value: str, data: bytes) -> str:
    """What messages call an inline image (never the whole payload)."""
    kind = value.partition(",")[0] if is_data_uri(value) else "bare base64"
    return f"inline image ({kind}, {len(data)} bytes)"
