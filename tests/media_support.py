"""Helpers shared by the media tests (tests/unit/test_media_*.py): pictures and the files
left in a folder."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

MAX = 4096 * 4096  # the pixel limit the media tests pass as max_pixels
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def save(image: Image.Image, path: Path, fmt: str = "PNG", **kw) -> str:
    image.save(path, format=fmt, **kw)
    return str(path)


def rgb(size: tuple[int, int] = (32, 24), color=(200, 100, 50)) -> Image.Image:
    return Image.new("RGB", size, color)


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def current_umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
