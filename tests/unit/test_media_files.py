"""media/files.py: the output path checked before any work (check_output_path), and PNG
outputs written atomically (write_png_atomic): whole or not at all, the old file kept on a
failure, modes as a new or replaced file should have them, a full disk named, and the
compression level changing the size, never the pixels.

Everything runs on real files in tmp_path; no model, no GPU.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from features_support import same
from harness import PNG_MAGIC
from media_support import IS_ROOT, current_umask, leftovers, rgb
from PIL import Image

from diffusers_backend.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from diffusers_backend.media import check_output_path, image_to_png_bytes, write_png_atomic


def test_check_output_path_ok(tmp_path: Path) -> None:
    assert check_output_path(str(tmp_path / "out.png")) == tmp_path / "out.png"


def test_check_output_path_empty() -> None:
    with pytest.raises(InvalidArgument, match="dst is empty"):
        check_output_path("")
    with pytest.raises(InvalidArgument, match="dst is empty"):
        check_output_path("   ")


def test_check_output_path_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=f"dst is a folder.*{tmp_path}"):
        check_output_path(str(tmp_path))


def test_check_output_path_missing_parent(tmp_path: Path) -> None:
    dst = str(tmp_path / "no" / "such" / "out.png")
    with pytest.raises(NotFound, match=f"output folder does not exist: {tmp_path}/no/such"):
        check_output_path(dst)


def test_check_output_path_parent_is_file(tmp_path: Path) -> None:
    parent = tmp_path / "file"
    parent.write_text("x")
    with pytest.raises(InvalidArgument, match="not a folder"):
        check_output_path(str(parent / "out.png"))


def test_check_output_path_field_name(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="video_dst="):
        check_output_path(str(tmp_path / "x" / "o.mp4"), field="video_dst")


def test_check_output_path_not_writable_mapped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "access", lambda *a, **kw: False)
    with pytest.raises(PermissionDenied, match=f"not writable: {tmp_path}"):
        check_output_path(str(tmp_path / "out.png"))


@pytest.mark.skipif(IS_ROOT, reason="root may write any folder")
def test_check_output_path_not_writable_real(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionDenied, match="ro"):
            check_output_path(str(folder / "out.png"))
    finally:
        folder.chmod(0o755)


def test_write_png_at_tmp_name_is_png(tmp_path: Path) -> None:
    dst = tmp_path / "result.tmp"
    write_png_atomic(rgb((20, 10)), str(dst))
    data = dst.read_bytes()
    assert data.startswith(PNG_MAGIC)
    with Image.open(dst) as im:
        assert im.format == "PNG"
        assert im.size == (20, 10)
    assert leftovers(tmp_path, {"result.tmp"}) == []


def test_write_png_new_file_is_readable_by_others(tmp_path: Path) -> None:
    dst = tmp_path / "out.png"
    write_png_atomic(rgb(), str(dst))
    mode = stat.S_IMODE(dst.stat().st_mode)
    assert mode == 0o666 & ~current_umask()


def test_write_png_keeps_existing_mode(tmp_path: Path) -> None:
    dst = tmp_path / "out.png"
    dst.write_bytes(b"old")
    dst.chmod(0o640)
    write_png_atomic(rgb(), str(dst))
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640
    assert dst.read_bytes().startswith(PNG_MAGIC)


def test_write_png_failure_keeps_old_file(tmp_path: Path) -> None:
    dst = tmp_path / "out.png"
    dst.write_bytes(b"previous result")
    with pytest.raises(OSError):
        write_png_atomic(Image.new("CMYK", (8, 8)), str(dst))  # PNG cannot hold CMYK
    assert dst.read_bytes() == b"previous result"
    assert leftovers(tmp_path, {"out.png"}) == []


def test_write_png_failure_from_save_cleans_up(tmp_path: Path) -> None:
    class Boom:
        def save(self, target, **kw):
            with open(target, "wb") as fh:
                fh.write(b"partial bytes")
            raise RuntimeError("encoder exploded")

    dst = tmp_path / "out.png"
    with pytest.raises(RuntimeError, match="exploded"):
        write_png_atomic(Boom(), str(dst))  # type: ignore[arg-type]
    assert not dst.exists()
    assert leftovers(tmp_path, set()) == []


def test_write_png_disk_full_is_resource_exhausted(tmp_path: Path) -> None:
    class Full:
        def save(self, *a, **kw):
            raise OSError(errno.ENOSPC, "No space left on device")

    dst = tmp_path / "out.png"
    with pytest.raises(ResourceExhausted, match="no space left.*out.png"):
        write_png_atomic(Full(), str(dst))  # type: ignore[arg-type]
    assert leftovers(tmp_path, set()) == []


def test_write_png_validates_path_first(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="output folder does not exist"):
        write_png_atomic(rgb(), str(tmp_path / "missing" / "o.png"))
    with pytest.raises(InvalidArgument, match="dst is a folder"):
        write_png_atomic(rgb(), str(tmp_path))


def test_image_to_png_bytes() -> None:
    data = image_to_png_bytes(rgb())
    assert data.startswith(PNG_MAGIC)


def test_png_compression_changes_size_not_pixels(tmp_path):
    from PIL import Image

    from diffusers_backend import media

    rng = np.random.default_rng(0)
    smooth = np.repeat(np.linspace(0, 255, 256, dtype=np.uint8)[None, :], 256, axis=0)
    picture = np.stack([smooth, smooth.T, (smooth // 2) + rng.integers(0, 2, smooth.shape,
                                                                          dtype=np.uint8)], -1)
    image = Image.fromarray(picture.astype(np.uint8), "RGB")
    media.write_png_atomic(image, str(tmp_path / "fast.png"), compress_level=0)
    media.write_png_atomic(image, str(tmp_path / "small.png"), compress_level=9)
    assert (tmp_path / "small.png").stat().st_size < (tmp_path / "fast.png").stat().st_size
    assert same(tmp_path / "fast.png", tmp_path / "small.png")
