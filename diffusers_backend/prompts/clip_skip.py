"""CLIP skip as LocalAI passes it, and the pipeline shapes compel and CLIP skip rely on:
which text encoders a pipeline has, how deep they are, and the SD/SDXL prompt families."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from diffusers_backend.errors import InvalidArgument
from diffusers_backend.registry.signatures import call_signature

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- CLIP skip


def call_parameters(pipe_or_params: set[str] | Callable[..., Any] | Any) -> set[str]:
    """Parameter names of a pipeline's ``__call__`` (or the set itself, if given one)."""
    if isinstance(pipe_or_params, (set, frozenset)):
        return set(pipe_or_params)
    try:
        return set(call_signature(type(pipe_or_params)).params)
    except (TypeError, ValueError):
        return set()


def effective_clip_skip(request_value: int, load_value: int) -> int:
    """The CLIP skip to use: the request's when it sets one (> 0), else the model's."""
    for value, source in ((request_value, "request"), (load_value, "model")):
        if value is not None and value < 0:
            raise InvalidArgument(f"{source} clip_skip must be 0 (off) or more, got {value}")
    if request_value and request_value > 0:
        return int(request_value)
    return int(load_value or 0)


def clip_skip_kwargs(
    pipe_call_accepts: set[str] | Callable[..., Any], clip_skip: int, enabled: bool
) -> dict[str, int]:
    """``{"clip_skip": n}`` when CLIP skip is enabled, n > 0, and the pipeline takes it.

    ``pipe_call_accepts`` is the set of parameter names of the pipeline's ``__call__``, or
    the pipeline itself (its signature is inspected). The value passes straight through,
    as LocalAI does: diffusers' ``clip_skip=1`` uses the pre-final CLIP layer.
    """
    if not enabled or not clip_skip or clip_skip <= 0:
        return {}
    if "clip_skip" not in call_parameters(pipe_call_accepts):
        log.debug("pipeline does not take clip_skip; ignoring clip_skip=%s", clip_skip)
        return {}
    return {"clip_skip": int(clip_skip)}


# ----------------------------------------------------------------------- pipeline shapes


def _is_clip_text_encoder(encoder: Any) -> bool:
    if encoder is None:
        return False
    model_type = getattr(getattr(encoder, "config", None), "model_type", "")
    return model_type == "clip_text_model" or type(encoder).__name__.startswith("CLIPText")


class _TextModelView:
    """Stands in for ``encoder.text_model`` on transformers 5's flattened CLIPTextModel."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder

    @property
    def final_layer_norm(self) -> Any:
        return self._encoder.final_layer_norm


def ensure_text_model_path(pipe: Any) -> None:
    """Give flattened CLIP text encoders the ``text_model.final_layer_norm`` path back.

    transformers 5 dropped ``CLIPTextModel.text_model`` (the layers now sit on the model
    itself), but diffusers 0.42's SD ``clip_skip`` and compel's penultimate-layer mode both
    still read ``text_encoder.text_model.final_layer_norm`` and crash with AttributeError.
    A view object stored outside ``nn.Module``'s registry restores the path without adding
    a submodule (so state dicts, ``.to()`` and offload hooks are unaffected).
    """
    for attr in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, attr, None)
        if (
            _is_clip_text_encoder(encoder)
            and not hasattr(encoder, "text_model")
            and hasattr(encoder, "final_layer_norm")
        ):
            object.__setattr__(encoder, "text_model", _TextModelView(encoder))


def prompt_family(pipe: Any, params: set[str]) -> str | None:
    """``"sd"`` (one CLIP encoder), ``"sdxl"`` (CLIP + CLIP with pooled output) or None.

    Decided from the components and call signature rather than the class, so img2img,
    inpaint, ControlNet and refiner variants are covered too.
    """
    if not {"prompt_embeds", "negative_prompt_embeds"} <= params:
        return None
    if getattr(pipe, "text_encoder_3", None) is not None:  # SD3: CLIP + CLIP + T5
        return None
    enc1, tok1 = getattr(pipe, "text_encoder", None), getattr(pipe, "tokenizer", None)
    enc2, tok2 = getattr(pipe, "text_encoder_2", None), getattr(pipe, "tokenizer_2", None)
    if {"pooled_prompt_embeds", "negative_pooled_prompt_embeds"} <= params:
        first_ok = enc1 is None or (_is_clip_text_encoder(enc1) and tok1 is not None)
        if _is_clip_text_encoder(enc2) and tok2 is not None and first_ok:
            return "sdxl"
        return None
    if _is_clip_text_encoder(enc1) and tok1 is not None and enc2 is None:
        return "sd"
    return None


def encoders(pipe: Any, family: str) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs whose embeddings the pipeline concatenates."""
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None))]
    if family == "sdxl":  # the refiner has only the second encoder
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return [(tok, enc) for tok, enc in pairs if enc is not None and tok is not None]


def check_clip_skip_depth(pipe: Any, family: str, clip_skip: int) -> None:
    """Refuse a clip_skip deeper than the text encoder, which diffusers would crash on.

    diffusers reads ``hidden_states[-(n + 1)]`` for SD and ``hidden_states[-(n + 2)]`` for
    SDXL; there are ``layers + 1`` hidden states.
    """
    if clip_skip <= 0:
        return
    for _, encoder in encoders(pipe, family):
        layers = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
        if not isinstance(layers, int):
            continue
        deepest = layers if family == "sd" else layers - 1
        if clip_skip > deepest:
            raise InvalidArgument(
                f"clip_skip {clip_skip} is too large for this model: its text encoder has "
                f"{layers} layers, so clip_skip can be at most {deepest}"
            )


