"""What a pipeline class's ``__call__`` accepts: read once per class, the one place that
inspects pipeline signatures (request building, option checks, loading, warm-up)."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

_NEEDS_IMAGE = re.compile(
    r"Img2Img|ImageToImage|Inpaint|ControlNet|Upscale|InstructPix2Pix|Variation"
    r"|StableVideoDiffusion|ImageToVideo|I2V",
)


@dataclass(frozen=True)
class CallSignature:
    """What a pipeline class's ``__call__`` accepts."""

    params: frozenset[str]
    required_image: bool
    var_kwargs: bool

    def accepts(self, name: str) -> bool:
        return name in self.params


_signatures: dict[type[Any], CallSignature] = {}


def call_signature(cls: type[Any]) -> CallSignature:
    """Inspect a pipeline class once; cached because it runs on every request (a race only
    inspects a class twice)."""
    found = _signatures.get(cls)
    if found is None:
        found = _signatures[cls] = _inspect(cls)
    return found


def _inspect(cls: type[Any]) -> CallSignature:
    parameters = inspect.signature(cls.__call__).parameters
    names = frozenset(n for n in parameters if n != "self")
    var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    image = parameters.get("image")
    required = image is not None and (
        image.default is inspect.Parameter.empty or bool(_NEEDS_IMAGE.search(cls.__name__))
    )
    return CallSignature(names - {"kwargs"}, required, var_kwargs)
