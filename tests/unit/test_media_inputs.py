"""media/inputs.py: validated inputs. Pictures and masks opened whatever their mode, format
or orientation, and refused with a clear status when missing, unreadable, truncated or too
big (decompression bombs refused from the header); inpainting inputs from LocalAI's JSON or
ref_images. The other media modules have their own test modules (test_media_files.py,
test_media_video.py, test_media_resize.py).

Everything runs on real files in tmp_path; no model, no GPU.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from harness import PNG_MAGIC
from media_support import IS_ROOT, MAX, rgb, save
from PIL import Image

from diffusers_backend.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from diffusers_backend.media import (
    image_to_png_bytes,
    is_inpaint_json,
    load_inpaint_inputs,
    open_image,
    open_mask,
)

# --------------------------------------------------------------------------- helpers


def png_b64(image: Image.Image) -> str:
    return base64.b64encode(image_to_png_bytes(image)).decode("ascii")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> str:
    """A ~100-byte PNG whose header claims a gigantic RGB image."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    data = PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
    data += png_chunk(b"IEND", b"")
    path.write_bytes(data)
    return str(path)


# --------------------------------------------------------------------------- open_image


def test_open_image_rgb_roundtrip(tmp_path: Path) -> None:
    path = save(rgb((32, 24)), tmp_path / "a.png")
    im = open_image(path, max_pixels=MAX)
    assert im.mode == "RGB"
    assert im.size == (32, 24)
    assert im.getpixel((0, 0)) == (200, 100, 50)


def test_open_image_missing_is_not_found(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.png")
    with pytest.raises(NotFound, match="src image not found: .*nope.png"):
        open_image(path, max_pixels=MAX)


def test_open_image_field_name_in_message(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.png")
    with pytest.raises(NotFound, match=r"ref_images\[0\] image not found"):
        open_image(path, field="ref_images[0]", max_pixels=MAX)


def test_open_image_empty_path_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="src is empty"):
        open_image("", max_pixels=MAX)


def test_open_image_folder_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=f"src is a folder.*{tmp_path}"):
        open_image(str(tmp_path), max_pixels=MAX)


def test_open_image_not_an_image_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello, not a picture")
    with pytest.raises(InvalidArgument, match="not an image file.*notes.png"):
        open_image(str(path), max_pixels=MAX)


def test_open_image_empty_file_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InvalidArgument, match="empty.png"):
        open_image(str(path), max_pixels=MAX)


def test_open_image_truncated_is_invalid(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = image_to_png_bytes(Image.fromarray(noise))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidArgument, match="damaged or truncated.*cut.png"):
        open_image(str(path), max_pixels=MAX)


def test_open_image_truncated_jpeg_is_invalid(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=95)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[:300])
    with pytest.raises(InvalidArgument, match="cut.jpg"):
        open_image(str(path), max_pixels=MAX)


def test_decompression_bomb_refused_from_header(tmp_path: Path) -> None:
    path = bomb_png(tmp_path / "bomb.png")
    assert os.path.getsize(path) < 200
    start = time.perf_counter()
    with pytest.raises(InvalidArgument, match=r"too large.*10000000000 pixels.*bomb.png"):
        open_image(path, max_pixels=MAX)
    assert time.perf_counter() - start < 0.5


def test_over_our_limit_refused_from_header(tmp_path: Path) -> None:
    # Below Pillow's own guard but above ours: our header check answers, with the size.
    path = bomb_png(tmp_path / "big.png", 5000, 5000)
    start = time.perf_counter()
    with pytest.raises(InvalidArgument, match=r"5000x5000 .*limit of 16777216.*big.png"):
        open_image(path, max_pixels=MAX)
    assert time.perf_counter() - start < 0.5


def test_decompression_bomb_pillow_guard_also_mapped(tmp_path: Path) -> None:
    # With our own limit set absurdly high, Pillow's DecompressionBombError still fires
    # and must come out as InvalidArgument, not a raw exception.
    path = bomb_png(tmp_path / "bomb.png")
    start = time.perf_counter()
    with pytest.raises(InvalidArgument, match="bomb.png"):
        open_image(path, max_pixels=10**12)
    assert time.perf_counter() - start < 0.5


def test_limit_is_on_pixels(tmp_path: Path) -> None:
    path = save(rgb((100, 100)), tmp_path / "a.png")
    assert open_image(path, max_pixels=100 * 100).size == (100, 100)
    with pytest.raises(InvalidArgument, match="100x100 .*10000 pixels.*limit of 9999"):
        open_image(path, max_pixels=100 * 100 - 1)


def test_eps_not_accepted(tmp_path: Path) -> None:
    path = tmp_path / "x.eps"
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(InvalidArgument, match="not an image file"):
        open_image(str(path), max_pixels=MAX)


@pytest.mark.skipif(IS_ROOT, reason="root reads any file")
def test_open_image_unreadable_is_permission_denied(tmp_path: Path) -> None:
    path = save(rgb(), tmp_path / "secret.png")
    os.chmod(path, 0)
    try:
        with pytest.raises(PermissionDenied, match="secret.png"):
            open_image(path, max_pixels=MAX)
    finally:
        os.chmod(path, 0o644)


def test_open_image_permission_error_mapped(tmp_path: Path, monkeypatch) -> None:
    path = save(rgb(), tmp_path / "secret.png")
    real_stat = os.stat

    def fake_stat(p, *a, **kw):
        if os.fspath(p) == path:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_stat(p, *a, **kw)

    monkeypatch.setattr(os, "stat", fake_stat)
    with pytest.raises(PermissionDenied, match="src image cannot be read.*secret.png"):
        open_image(path, max_pixels=MAX)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (10, 8), (10, 20, 30, 255)),
        Image.new("LA", (10, 8), (10, 255)),
        Image.new("L", (10, 8), 10),
        Image.new("1", (10, 8), 1),
        Image.new("RGB", (10, 8), (10, 20, 30)).convert("P"),
    ],
    ids=["RGBA", "LA", "L", "1", "P"],
)
def test_modes_open_as_rgb(tmp_path: Path, image: Image.Image) -> None:
    path = save(image, tmp_path / "m.png")
    im = open_image(path, max_pixels=MAX)
    assert im.mode == "RGB"
    assert im.size == (10, 8)


def test_rgba_transparency_flattened_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    im.putpixel((0, 0), (255, 0, 0, 255))
    out = open_image(save(im, tmp_path / "t.png"), max_pixels=MAX)
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((3, 3)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    im.putpixel((1, 1), 1)
    im.info["transparency"] = 0
    out = open_image(save(im, tmp_path / "p.png", transparency=0), max_pixels=MAX)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (0, 255, 0)


def test_sixteen_bit_grey_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    src = Image.fromarray(arr)
    assert src.mode.startswith("I;16")
    path = save(src, tmp_path / "g16.png")
    out = open_image(path, max_pixels=MAX)
    assert out.mode == "RGB"
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128,) * 3, (255,) * 3]


def test_cmyk_jpeg_opens_as_rgb(tmp_path: Path) -> None:
    path = save(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), tmp_path / "c.jpg", "JPEG")
    out = open_image(path, max_pixels=MAX)
    assert out.mode == "RGB"
    assert out.size == (8, 8)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(im, tmp_path / "phone.jpg", "JPEG", exif=exif, quality=95)
    out = open_image(path, max_pixels=MAX)
    assert out.size == (20, 40)
    # After a clockwise turn the white left half is at the top.
    assert out.getpixel((10, 5))[0] > 200
    assert out.getpixel((10, 35))[0] < 50


def test_ignores_extension(tmp_path: Path) -> None:
    path = save(rgb(), tmp_path / "upload.tmp")
    assert open_image(path, max_pixels=MAX).size == (32, 24)


# --------------------------------------------------------------------------- open_mask


def test_open_mask_is_l(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (8, 8), (255, 255, 255)), tmp_path / "m.png")
    mask = open_mask(path, max_pixels=MAX)
    assert mask.mode == "L"
    assert mask.getpixel((0, 0)) == 255


def test_open_mask_transparent_background_is_black(tmp_path: Path) -> None:
    im = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    im.putpixel((2, 2), (255, 255, 255, 255))
    mask = open_mask(save(im, tmp_path / "m.png"), max_pixels=MAX)
    assert mask.getpixel((0, 0)) == 0
    assert mask.getpixel((2, 2)) == 255


def test_open_mask_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="mask image not found: .*m.png"):
        open_mask(str(tmp_path / "m.png"), max_pixels=MAX)


# --------------------------------------------------------------------------- inpainting


def write_json(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_is_inpaint_json(tmp_path: Path) -> None:
    assert is_inpaint_json(write_json(tmp_path / "a.json", {"image": ""}))
    spaced = tmp_path / "b"
    spaced.write_bytes(b'\xef\xbb\xbf \n\t {"image": 1}')
    assert is_inpaint_json(str(spaced))
    assert not is_inpaint_json(save(rgb(), tmp_path / "c.png"))
    assert not is_inpaint_json(str(tmp_path / "missing"))
    assert not is_inpaint_json(str(tmp_path))
    assert not is_inpaint_json("")


def test_inpaint_from_json(tmp_path: Path) -> None:
    image = rgb((16, 12), (1, 2, 3))
    mask = Image.new("L", (16, 12), 255)
    src = write_json(tmp_path / "req", {"image": png_b64(image), "mask_image": png_b64(mask)})
    got = load_inpaint_inputs(src, [], max_pixels=MAX)
    assert got is not None
    im, m = got
    assert (im.mode, im.size, im.getpixel((0, 0))) == ("RGB", (16, 12), (1, 2, 3))
    assert (m.mode, m.size, m.getpixel((0, 0))) == ("L", (16, 12), 255)


def test_inpaint_from_json_with_data_url_and_wrapped_base64(tmp_path: Path) -> None:
    image = rgb((16, 12))
    mask = Image.new("L", (16, 12), 0)
    wrapped = png_b64(mask)
    wrapped = "\n".join(wrapped[i : i + 60] for i in range(0, len(wrapped), 60))
    src = write_json(
        tmp_path / "req.json",
        {"image": "data:image/png;base64," + png_b64(image), "mask_image": wrapped},
    )
    im, m = load_inpaint_inputs(src, [], max_pixels=MAX)
    assert im.size == m.size == (16, 12)


def test_inpaint_json_wins_over_ref_images(tmp_path: Path) -> None:
    # The host's inpainting endpoint sends both the JSON and ref_images.
    image = rgb((16, 12), (9, 9, 9))
    mask = Image.new("L", (16, 12), 255)
    src = write_json(tmp_path / "req", {"image": png_b64(image), "mask_image": png_b64(mask)})
    refs = [save(rgb((8, 8)), tmp_path / "i.png"), save(rgb((8, 8)), tmp_path / "m.png")]
    im, m = load_inpaint_inputs(src, refs, max_pixels=MAX)
    assert im.size == (16, 12)
    assert im.getpixel((0, 0)) == (9, 9, 9)


def test_inpaint_ref_images_fallback(tmp_path: Path) -> None:
    src = write_json(tmp_path / "req", {})
    refs = [
        save(rgb((8, 6), (5, 6, 7)), tmp_path / "i.png"),
        save(Image.new("RGB", (8, 6), (255, 255, 255)), tmp_path / "m.png"),
    ]
    im, m = load_inpaint_inputs(src, refs, max_pixels=MAX)
    assert (im.mode, im.getpixel((0, 0))) == ("RGB", (5, 6, 7))
    assert (m.mode, m.getpixel((0, 0))) == ("L", 255)


def test_inpaint_ref_images_fallback_missing_file(tmp_path: Path) -> None:
    src = write_json(tmp_path / "req", {"image": "", "mask_image": ""})
    refs = [save(rgb(), tmp_path / "i.png"), str(tmp_path / "gone.png")]
    with pytest.raises(NotFound, match=r"ref_images\[1\] image not found: .*gone.png"):
        load_inpaint_inputs(src, refs, max_pixels=MAX)


def test_not_inpaint_for_plain_image_or_empty(tmp_path: Path) -> None:
    path = save(rgb(), tmp_path / "a.png")
    refs = [path, path]
    assert load_inpaint_inputs(path, refs, max_pixels=MAX) is None
    assert load_inpaint_inputs("", refs, max_pixels=MAX) is None
    assert load_inpaint_inputs("", [], max_pixels=MAX) is None


def test_inpaint_broken_json(tmp_path: Path) -> None:
    path = tmp_path / "req"
    path.write_text('{"image": "abc", ')
    with pytest.raises(InvalidArgument, match="not valid JSON.*line 1.*req"):
        load_inpaint_inputs(str(path), [], max_pixels=MAX)


def test_inpaint_json_without_fields_and_no_refs(tmp_path: Path) -> None:
    path = tmp_path / "req"
    path.write_text(' {"a": 1}')
    with pytest.raises(InvalidArgument, match='no "image" field.*req'):
        load_inpaint_inputs(str(path), [path.name], max_pixels=MAX)


def test_inpaint_missing_mask(tmp_path: Path) -> None:
    src = write_json(tmp_path / "req", {"image": png_b64(rgb())})
    with pytest.raises(InvalidArgument, match='no "mask_image" field.*req'):
        load_inpaint_inputs(src, [], max_pixels=MAX)


def test_inpaint_bad_base64(tmp_path: Path) -> None:
    src = write_json(tmp_path / "req", {"image": "!!!not base64!!!", "mask_image": "x"})
    with pytest.raises(InvalidArgument, match='"image" is not valid base64.*req'):
        load_inpaint_inputs(src, [], max_pixels=MAX)


def test_inpaint_base64_not_an_image(tmp_path: Path) -> None:
    junk = base64.b64encode(b"hello world, no image here").decode()
    src = write_json(tmp_path / "req", {"image": png_b64(rgb()), "mask_image": junk})
    with pytest.raises(InvalidArgument, match='"mask_image" is not an image file'):
        load_inpaint_inputs(src, [], max_pixels=MAX)


def test_inpaint_field_wrong_type(tmp_path: Path) -> None:
    src = write_json(tmp_path / "req", {"image": 12, "mask_image": png_b64(rgb())})
    with pytest.raises(InvalidArgument, match='"image" must be a base64 string'):
        load_inpaint_inputs(src, [], max_pixels=MAX)


def test_inpaint_mask_of_another_size_is_resized(tmp_path: Path) -> None:
    src = write_json(
        tmp_path / "req",
        {"image": png_b64(rgb((64, 48))), "mask_image": png_b64(Image.new("L", (32, 32)))},
    )
    image, mask = load_inpaint_inputs(src, [], max_pixels=MAX) or (None, None)
    assert image is not None and mask is not None
    assert mask.size == image.size == (64, 48)


def test_inpaint_bomb_in_json_refused(tmp_path: Path) -> None:
    bomb = base64.b64encode(Path(bomb_png(tmp_path / "b.png")).read_bytes()).decode()
    src = write_json(tmp_path / "req", {"image": bomb, "mask_image": bomb})
    with pytest.raises(InvalidArgument, match='"image" image is too large.*req'):
        load_inpaint_inputs(src, [], max_pixels=MAX)
