"""Inline images (media.inline): a ``data:`` URI or unambiguous bare base64 decodes to the
same picture as the file, with the same caps and errors; paths stay paths."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusers_backend.errors import InvalidArgument
from diffusers_backend.media import check_input_path, load_inpaint_inputs, open_image, open_mask
from diffusers_backend.media.inline import inline_bytes

MAX = 4096 * 4096


def png(path: Path, size=(24, 16), seed=0, mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_data_uri_and_bare_base64_are_the_file(tmp_path: Path) -> None:
    path = png(tmp_path / "a.png")
    from_file = np.asarray(open_image(str(path), max_pixels=MAX))
    for value in ("data:image/png;base64," + b64(path), b64(path),
                  "DATA:image/png;BASE64," + b64(path).rstrip("=")):
        check_input_path(value, field="ref_images[0]")  # names no path: nothing to stat
        assert np.array_equal(np.asarray(open_image(value, max_pixels=MAX)), from_file)


def test_paths_are_never_taken_for_base64(tmp_path: Path) -> None:
    assert inline_bytes(str(tmp_path / "abcdefghijklmnopqrstuvwxyz012345.png"), "src") is None
    assert inline_bytes("relative/path/to/an/image/file/that/is/long.png", "src") is None
    assert inline_bytes("QUJD" * 20, "src") is None  # valid base64, but not an image


@pytest.mark.parametrize("value, words", [
    ("data:image/png;base64,@@@@", "does not decode"),
    ("data:image/png,raw", "not base64"),
    ("data:image/png;base64", "without a comma"),
    ("data:image/png;base64," + base64.b64encode(b"plain text").decode(), "not an image"),
])
def test_bad_inline_image_is_invalid_argument_naming_the_field(value: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"ref_images\[2\].*{words}"):
        open_image(value, field="ref_images[2]", max_pixels=MAX)


def test_inline_image_has_the_pixel_cap(tmp_path: Path) -> None:
    value = "data:image/png;base64," + b64(png(tmp_path / "a.png", size=(64, 64)))
    with pytest.raises(InvalidArgument, match="above the limit of 100 pixels.*inline image"):
        open_image(value, max_pixels=100)


def test_inline_mask_and_inpainting_json(tmp_path: Path) -> None:
    image = png(tmp_path / "i.png", size=(32, 32))
    mask = png(tmp_path / "m.png", size=(16, 16), mode="L")
    assert open_mask("data:image/png;base64," + b64(mask), max_pixels=MAX).mode == "L"
    body = json.dumps({"image": b64(image), "mask_image": b64(mask)}).encode()
    src = "data:application/json;base64," + base64.b64encode(body).decode()
    got = load_inpaint_inputs(src, [], max_pixels=MAX)
    assert got is not None
    assert got[0].size == got[1].size == (32, 32)  # the mask was resized to the image
    with pytest.raises(InvalidArgument, match="above the limit of 10"):
        load_inpaint_inputs(src, [], max_pixels=MAX, max_json_bytes=10)
