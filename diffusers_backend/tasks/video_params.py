"""``GenerateVideoRequest.params``: extra keyword arguments of the video call, typed and checked.

LocalAI's host passes the user's ``params`` map through unchanged and LocalAI's own backend
never reads it, so a key this pipeline does not take must not fail a good request: it is
ignored with a warning (in the reply and the log). A key it does take is passed, typed like
an option value, after three checks that answer INVALID_ARGUMENT:

* keys the request's own fields set (``num_frames``, ``width``...) would bypass their checks;
* tensors and embeddings (``latents``, ``prompt_embeds``, any ``*_embeds``, generators,
  callbacks) cannot be written as a string at all;
* ``clip_skip`` outside 0..(layers of the text encoder - 1).

Any other value diffusers refuses (``guidance_scale:abc``) fails inside the call with a
ValueError or TypeError, which reaches the client as INVALID_ARGUMENT too.
"""

from __future__ import annotations

import inspect
import logging
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from diffusers_backend.errors import InvalidArgument
from diffusers_backend.loading.spec import parse_option_value

log = logging.getLogger(__name__)

# Video request fields validated on their own; ``params`` may not bypass those checks.
VALIDATED_VIDEO_KEYS = frozenset({
    "num_frames", "width", "height", "num_inference_steps", "fps", "frame_rate", "image",
    "last_image", "generator", "callback_on_step_end", "output_type", "return_dict",
})
_OBJECT_KEYS = frozenset({"latents", "generator", "callback", "callback_on_step_end",
                          "callback_on_step_end_tensor_inputs"})
_OBJECT_WORDS = ("Tensor", "Generator", "Callable", "ndarray", "Image")


@dataclass
class VideoParams:
    """The params to pass, and a note for each key that was ignored."""

    values: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def _plain_types(annotation: Any) -> set[type]:
    """The plain Python types an annotation allows (``float``, ``int | None``...)."""
    if annotation is inspect.Parameter.empty:
        return set()
    if isinstance(annotation, type):
        return {annotation}
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        found: set[type] = set()
        for arg in typing.get_args(annotation):
            found |= _plain_types(arg)
        return found
    return {origin} if isinstance(origin, type) else set()


def _takes_objects(name: str, annotation: Any) -> bool:
    """Whether the parameter wants a tensor, generator, callback or picture."""
    if name in _OBJECT_KEYS or name.endswith("_embeds") or name.endswith("_latents"):
        return True
    text = annotation if isinstance(annotation, str) else repr(annotation)
    plain = _plain_types(annotation) - {type(None)}
    return bool(not plain and any(word in text for word in _OBJECT_WORDS))


def _text_encoder_layers(pipe: Any) -> int:
    config = getattr(getattr(pipe, "text_encoder", None), "config", None)
    layers = getattr(config, "num_hidden_layers", 0)
    return layers if isinstance(layers, int) and layers > 0 else 0


def _check_clip_skip(value: Any, pipe: Any) -> None:
    layers = _text_encoder_layers(pipe)
    top = f" and at most {layers - 1} (the text encoder has {layers} layers)" if layers else ""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (
            layers and value >= layers):
        raise InvalidArgument(f"params key 'clip_skip' must be a whole number from 0{top}, "
                              f"got {value!r}")


def video_params(params: dict[str, str], pipe: Any) -> VideoParams:
    """Type and check ``params`` against the loaded video pipeline's call."""
    cls = type(pipe)
    parameters = inspect.signature(cls.__call__).parameters
    out = VideoParams()
    for key, raw in sorted(params.items()):
        if key in VALIDATED_VIDEO_KEYS:
            raise InvalidArgument(
                f"params key {key!r} is set by the request's own fields (num_frames, width, "
                "height, step, fps, start_image, end_image), not through params")
        parameter = parameters.get(key)
        annotation = parameter.annotation if parameter is not None else inspect.Parameter.empty
        if _takes_objects(key, annotation):
            raise InvalidArgument(
                f"params key {key!r} takes a tensor or object, which cannot be sent as a "
                "params string")
        if parameter is None or key == "self" or parameter.kind in (
                inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            note = f"params key {key!r} ignored: {cls.__name__} does not take it"
            log.warning("GenerateVideo: %s", note)
            out.ignored.append(note)
            continue
        value = parse_option_value(raw)
        if key == "clip_skip":
            _check_clip_skip(value, pipe)
        out.values[key] = value
    return out
