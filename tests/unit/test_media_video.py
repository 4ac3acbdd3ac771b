"""media/video.py: videos written atomically as MP4 (write_video_atomic) from PIL frames, float
arrays of odd sizes and uint8 lists, the old file kept on a failure, bad frames refused.

Everything runs on real files in tmp_path; no model, no GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from media_support import leftovers, rgb
from PIL import Image
from video_read import read_video

from diffusers_backend.errors import InvalidArgument, NotFound
from diffusers_backend.media import write_video_atomic


def test_write_video_pil_frames(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (64, 64), (i * 30, 0, 0)) for i in range(8)]
    dst = tmp_path / "clip.tmp"  # the ending must not matter
    write_video_atomic(frames, str(dst), fps=7)
    assert leftovers(tmp_path, {"clip.tmp"}) == []
    assert dst.read_bytes()[4:8] == b"ftyp"  # an MP4 container whatever the name
    video = read_video(dst)
    assert (len(video.frames), video.size) == (8, (64, 64))
    assert video.fps == pytest.approx(7.0)


def test_write_video_float_array_odd_size(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).random((5, 33, 47, 3), dtype=np.float32)
    dst = tmp_path / "odd.mp4"
    write_video_atomic(frames, str(dst), fps=8)
    video = read_video(dst)
    assert len(video.frames) == 5
    assert video.size == (48, 34)  # padded to even by one pixel, not rescaled to 16s


def test_write_video_uint8_list(tmp_path: Path) -> None:
    frames = [np.full((32, 32, 3), 200, dtype=np.uint8) for _ in range(3)]
    dst = tmp_path / "u8.mp4"
    write_video_atomic(frames, str(dst), fps=4)
    first = read_video(dst).frames[0]
    assert abs(int(first.mean()) - 200) < 8  # uint8 frames are not multiplied by 255


def test_write_video_failure_keeps_old_file(tmp_path: Path) -> None:
    dst = tmp_path / "v.mp4"
    dst.write_bytes(b"old video")
    frames = [Image.new("RGB", (32, 32)), Image.new("RGB", (16, 16))]
    with pytest.raises(InvalidArgument, match="frame 1 is 16x16 but frame 0 is 32x32"):
        write_video_atomic(frames, str(dst), fps=7)
    assert dst.read_bytes() == b"old video"
    assert leftovers(tmp_path, {"v.mp4"}) == []


def test_write_video_rejects_bad_input(tmp_path: Path) -> None:
    dst = str(tmp_path / "v.mp4")
    with pytest.raises(InvalidArgument, match="no video frames"):
        write_video_atomic([], dst, fps=7)
    with pytest.raises(InvalidArgument, match="fps"):
        write_video_atomic([rgb()], dst, fps=0)
    with pytest.raises(NotFound, match="output folder does not exist"):
        write_video_atomic([rgb()], str(tmp_path / "x" / "v.mp4"), fps=7)
    assert leftovers(tmp_path, set()) == []
