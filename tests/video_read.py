"""MP4s read back in this process, with PyAV.

Not imageio's ffmpeg reader: that forks an ``ffmpeg`` subprocess, and a fork while the test
process holds gRPC channels sometimes fails ("epoll_wait error: Bad file descriptor")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class Video:
    """The decoded frames of a video file's first video stream, and its frame rate."""

    frames: np.ndarray  # (frames, height, width, 3) uint8 RGB
    fps: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])


def read_video(path: str | Path) -> Video:
    """Decode every frame of ``path``, an MP4 whatever its file name ends with (a host may
    ask for ``.png``)."""
    with av.open(str(path), format="mp4") as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        rate = stream.average_rate or stream.guessed_rate
    if not frames:
        raise AssertionError(f"{path} holds no video frames")
    return Video(np.stack(frames), float(rate))
