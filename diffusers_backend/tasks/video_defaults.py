"""What a video request gets when it leaves frames, fps or steps at 0: the loaded family's own.

A video model is trained for one frame rate and length (Wan 16 fps and 81 frames, LTX 24 fps,
SVD 7 fps...). One global default made every family wrong but one, so the values come from
the pipeline itself, in this order:

* frames and steps: the defaults of its ``__call__`` (``num_frames``, ``num_inference_steps``);
  ``None`` there means the pipeline decides (SVD reads its UNet config), so we pass nothing;
* frame rate: the rate its diffusers example exports with (``export_to_video(..., fps=16)`` in
  the module's ``EXAMPLE_DOC_STRING``; LTX: 24, though its ``frame_rate`` argument defaults
  to 25), else its ``fps``/``frame_rate`` call parameter (SVD 7, LTX-2 24), else
  :data:`FALLBACK_FPS`. Video calls get that rate as ``fps``/``frame_rate`` too, so what the
  model is conditioned on and what the file says agree.

``FRAMES`` and ``FPS`` (environment) override the pipeline; request fields override both.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from dataclasses import dataclass

FALLBACK_FPS = 8  # AnimateDiff / ModelScope text-to-video examples (exported as 8 fps GIFs)
_EXAMPLE_FPS = re.compile(r"export_to_video\([^)]*?\bfps\s*=\s*(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class VideoDefaults:
    """The loaded video pipeline's own defaults; ``None`` = let the pipeline choose."""

    frames: int | None
    steps: int | None
    fps: int


def _default(parameters: dict[str, inspect.Parameter], name: str) -> object:
    parameter = parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


def _positive_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return int(round(value))


def _example_fps(cls: type) -> int | None:
    """The frame rate the family's diffusers example writes its video with."""
    module = sys.modules.get(cls.__module__)
    example = getattr(module, "EXAMPLE_DOC_STRING", "") or ""
    rates = _EXAMPLE_FPS.findall(example if isinstance(example, str) else "")
    return _positive_int(float(rates[0])) if rates else None


@functools.lru_cache(maxsize=64)
def video_defaults(cls: type) -> VideoDefaults:
    """The defaults of pipeline class ``cls`` (cached: read once per class)."""
    parameters = dict(inspect.signature(cls.__call__).parameters)
    fps = (_example_fps(cls) or _positive_int(_default(parameters, "fps"))
           or _positive_int(_default(parameters, "frame_rate")) or FALLBACK_FPS)
    return VideoDefaults(frames=_positive_int(_default(parameters, "num_frames")),
                         steps=_positive_int(_default(parameters, "num_inference_steps")),
                         fps=fps)
