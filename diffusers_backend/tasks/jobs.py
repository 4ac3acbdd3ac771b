"""Plain request objects: what a generation RPC asked for, free of protobuf types.

The servicer builds these from the wire messages; the runtime and generation code take
only these, so they can be tested and reused without gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageJob:
    """One GenerateImage request."""

    prompt: str
    negative_prompt: str = ""
    width: int = 0
    height: int = 0
    steps: int = 0
    seed: int = 0
    dst: str = ""
    src: str = ""
    ref_images: tuple[str, ...] = ()
    enable_parameters: str = ""
    clip_skip: int = 0


@dataclass(frozen=True)
class VideoJob:
    """One GenerateVideo request."""

    prompt: str
    negative_prompt: str = ""
    start_image: str = ""
    end_image: str = ""
    width: int = 0
    height: int = 0
    num_frames: int = 0
    fps: int = 0
    seed: int = 0
    cfg_scale: float = 0.0
    steps: int = 0
    dst: str = ""
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UpscaleJob:
    """One UpscaleImage request."""

    src: str
    dst: str
    scale: int = 0
