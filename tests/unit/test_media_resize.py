"""media/resize.py: the Lanczos upscaler (lanczos_upscale), its scales and the pixel limit
checked before any work."""

from __future__ import annotations

import time

import pytest
from media_support import MAX, rgb

from diffusers_backend.errors import InvalidArgument
from diffusers_backend.media import lanczos_upscale


def test_lanczos_default_doubles() -> None:
    out = lanczos_upscale(rgb((30, 20)), 0, max_pixels=MAX)
    assert out.size == (60, 40)
    assert out.mode == "RGB"


def test_lanczos_scale_three_and_one() -> None:
    src = rgb((10, 7))
    assert lanczos_upscale(src, 3, max_pixels=MAX).size == (30, 21)
    same = lanczos_upscale(src, 1, max_pixels=MAX)
    assert same.size == (10, 7)
    assert same is not src


def test_lanczos_huge_scale_refused_instantly() -> None:
    start = time.perf_counter()
    with pytest.raises(InvalidArgument, match="32000x24000.*limit of"):
        lanczos_upscale(rgb((32, 24)), 1000, max_pixels=MAX)
    assert time.perf_counter() - start < 0.1


def test_lanczos_negative_scale() -> None:
    with pytest.raises(InvalidArgument, match="scale must be"):
        lanczos_upscale(rgb(), -1, max_pixels=MAX)
