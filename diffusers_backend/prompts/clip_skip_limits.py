"""CLIP skip deeper than a model's CLIP text encoders is refused at validation, for every
pipeline that has them (SD 1.x/2.x, SDXL, SD3's two CLIP encoders, Flux), in both engines.

diffusers reads ``hidden_states[-(n + 1)]`` for SD 1.x/2.x and ``hidden_states[-(n + 2)]``
for SDXL and SD3 (and our weighted prompts do the same); a deeper ``n`` crashes inside
diffusers with ``IndexError: tuple index out of range``. T5 and other encoders take no
CLIP skip. The message has the shape of SDXL's (``prompts.clip_skip``).
"""

from __future__ import annotations

from typing import Any

from diffusers_backend.errors import InvalidArgument
from diffusers_backend.prompts.clip_skip import (
    call_parameters,
    prompt_family,
)

ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def _is_clip(encoder: Any) -> bool:
    model_type = getattr(getattr(encoder, "config", None), "model_type", "")
    return model_type == "clip_text_model" or type(encoder).__name__.startswith("CLIPText")


def check_clip_skip_limit(pipe: Any, clip_skip: int, enabled: bool = True) -> None:
    """Raise InvalidArgument when ``clip_skip`` is deeper than a CLIP encoder of ``pipe``."""
    if not enabled or clip_skip <= 0:
        return
    one_back = prompt_family(pipe, call_parameters(pipe)) == "sd"  # -(n + 1), else -(n + 2)
    for name in ENCODERS:
        encoder = getattr(pipe, name, None)
        if encoder is None or not _is_clip(encoder):
            continue
        layers = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
        if not isinstance(layers, int):
            continue
        deepest = layers if one_back else layers - 1
        if clip_skip > deepest:
            raise InvalidArgument(
                f"clip_skip {clip_skip} is too large for this model: its text encoder has "
                f"{layers} layers, so clip_skip can be at most {deepest}")
