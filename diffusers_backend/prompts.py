"""Prompt handling for a pipeline call: compel prompt weighting and CLIP skip.

With ``COMPEL=1`` prompts may use compel's weighting syntax (``a (red)++ cube``,
``(cube)1.3``, ``("a", "b").and()``...). The weighted prompt becomes embeddings passed as
``prompt_embeds`` (plus the pooled ones for SDXL) in place of ``prompt``; the negative
prompt is weighted the same way, and both come out padded to one length so long prompts
work. Only pipelines that take CLIP embeddings in the SD 1.x/2.x or SDXL shape get this;
SD3 and Flux get the same weighting with the A1111 syntax (``(word:1.3)``) from
``weighted_prompts.py``; for any other pipeline (video models...) the plain prompts are
passed, so a model never fails because ``COMPEL`` is on.

CLIP skip follows LocalAI: the model YAML's ``clip_skip`` (or the request's, which wins)
is passed straight through as diffusers' ``clip_skip``, where 1 means "use the layer
before the last one" (what A1111 calls "Clip skip: 2"). It is only passed to pipelines
whose ``__call__`` takes it. compel 2.5.1 has no ``clip_skip`` option of its own, so with
compel the same layer is selected here (see :class:`_ClipSkipEncoder`), with the layer
choice and normalization diffusers itself uses. Without clip skip, a prompt without
weights gives the same image with COMPEL on or off. With clip skip there is one deliberate
difference: diffusers applies it to the positive prompt only, while with compel it applies
to the negative prompt too, as in A1111.

Nothing here imports torch, diffusers or compel at module level: the server must start
fast, and compel is optional.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from .errors import InvalidArgument

log = logging.getLogger(__name__)

_warn_lock = threading.Lock()
_warned_missing = False

# pipe -> {cache key: list of Compel}. Building Compel objects is cheap, but each one
# encodes an empty prompt the first time a weight is used; keeping them saves that.
_COMPEL_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple, list[Any]]] = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------- compel setup


def compel_available() -> bool:
    """True when the optional ``compel`` package is installed (checked without importing)."""
    return importlib.util.find_spec("compel") is not None


def warn_if_compel_missing(use_compel: bool) -> None:
    """Log, once per process, that COMPEL is on but compel is not installed.

    The server calls this at start-up so the problem shows in the log before the first
    request; generation then silently uses plain prompts.
    """
    global _warned_missing
    if not use_compel or compel_available():
        return
    with _warn_lock:
        if _warned_missing:
            return
        _warned_missing = True
    log.warning(
        "COMPEL is on but the 'compel' package is not installed; prompts are used "
        "without weighting (pip install compel to enable it)"
    )


# ----------------------------------------------------------------------------- CLIP skip


def _call_parameters(pipe_or_params: set[str] | Callable[..., Any] | Any) -> set[str]:
    """Parameter names of a pipeline's ``__call__`` (or the set itself, if given one)."""
    if isinstance(pipe_or_params, (set, frozenset)):
        return set(pipe_or_params)
    try:
        return set(inspect.signature(pipe_or_params).parameters)
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
    if "clip_skip" not in _call_parameters(pipe_call_accepts):
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


def _ensure_text_model_path(pipe: Any) -> None:
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


def _prompt_family(pipe: Any, params: set[str]) -> str | None:
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


def _encoders(pipe: Any, family: str) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs whose embeddings the pipeline concatenates."""
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None))]
    if family == "sdxl":  # the refiner has only the second encoder
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return [(tok, enc) for tok, enc in pairs if enc is not None and tok is not None]


def _check_clip_skip_depth(pipe: Any, family: str, clip_skip: int) -> None:
    """Refuse a clip_skip deeper than the text encoder, which diffusers would crash on.

    diffusers reads ``hidden_states[-(n + 1)]`` for SD and ``hidden_states[-(n + 2)]`` for
    SDXL; there are ``layers + 1`` hidden states.
    """
    if clip_skip <= 0:
        return
    for _, encoder in _encoders(pipe, family):
        layers = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
        if not isinstance(layers, int):
            continue
        deepest = layers if family == "sd" else layers - 1
        if clip_skip > deepest:
            raise InvalidArgument(
                f"clip_skip {clip_skip} is too large for this model: its text encoder has "
                f"{layers} layers, so clip_skip can be at most {deepest}"
            )


# ---------------------------------------------------------------------------- compel use


class _ClipSkipEncoder:
    """A text encoder whose last ``drop`` hidden states are hidden from compel.

    compel can take the last or the penultimate hidden state. Dropping ``drop`` states
    from the end makes its "penultimate" any earlier layer, i.e. diffusers' clip_skip:
    SD uses ``hidden_states[-(n + 1)]`` (then the final layer norm) = penultimate after
    dropping n - 1; SDXL uses ``hidden_states[-(n + 2)]`` = penultimate after dropping n.
    Pooled output is untouched, as in diffusers. Everything else is the wrapped encoder.
    """

    def __init__(self, encoder: Any, drop: int) -> None:
        self._encoder = encoder
        self._drop = drop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self._encoder(*args, **kwargs)
        hidden = getattr(output, "hidden_states", None)
        if self._drop and hidden is not None:
            output.hidden_states = tuple(hidden[: len(hidden) - self._drop])
        return output


def _make_compels(pipe: Any, family: str, clip_skip: int) -> list[Any]:
    """One Compel per text encoder, configured the way diffusers encodes that family."""
    from compel import Compel, ReturnedEmbeddingsType

    device = getattr(pipe, "_execution_device", None)
    if family == "sd":
        embeddings = (
            ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NORMALIZED
            if clip_skip > 0
            else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
        )
        drop = max(clip_skip - 1, 0)
    else:
        embeddings = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
        drop = clip_skip
    compels = []
    for tokenizer, encoder in _encoders(pipe, family):
        compels.append(
            Compel(
                tokenizer=tokenizer,
                text_encoder=_ClipSkipEncoder(encoder, drop) if drop else encoder,
                returned_embeddings_type=embeddings,
                truncate_long_prompts=False,  # long prompts become several 77-token chunks
                device=str(device) if device is not None else None,
            )
        )
    return compels


def _cached_compels(pipe: Any, family: str, clip_skip: int) -> list[Any]:
    encoders = tuple(id(enc) for _, enc in _encoders(pipe, family))
    device = str(getattr(pipe, "_execution_device", ""))
    key = (family, clip_skip, encoders, device)
    try:
        per_pipe = _COMPEL_CACHE.setdefault(pipe, {})
    except TypeError:  # not weak-referenceable: build every time
        return _make_compels(pipe, family, clip_skip)
    if key not in per_pipe:
        per_pipe.clear()  # the pipe changed (device, encoders); drop stale ones
        per_pipe[key] = _make_compels(pipe, family, clip_skip)
    return per_pipe[key]


def _plain_text(prompt: str) -> str:
    """The prompt's words without compel syntax, for the pooled embedding.

    compel 2.5.1 builds pooled embeddings from the raw string, so ``a (red)++ cube`` would
    put ``(``, ``)`` and ``+`` tokens into SDXL's pooled vector.
    """
    from compel import Compel

    try:
        conjunction = Compel.parse_prompt_string(prompt)
    except Exception:  # noqa: BLE001 - fall back to the raw text; weighting reports errors
        return prompt

    def texts(node: Any) -> list[str]:
        if hasattr(node, "text"):
            return [node.text]
        if hasattr(node, "original"):  # .swap(): the pooled vector follows the original
            return [t for child in node.original for t in texts(child)]
        if hasattr(node, "prompts"):  # a blend: take its first prompt
            return texts(node.prompts[0]) if node.prompts else []
        return [t for child in getattr(node, "children", []) for t in texts(child)]

    words = [t.strip() for p in conjunction.prompts for t in texts(p)]
    return " ".join(w for w in words if w)


def _pad_tokens(compel: Any, embeds: Any, length: int) -> Any:
    """Extend ``embeds`` to ``length`` tokens with that encoder's empty-prompt chunks."""
    import torch

    missing = length - embeds.shape[1]
    if missing <= 0:
        return embeds
    empty = compel.build_conditioning_tensor("").to(embeds.device, embeds.dtype)
    repeats = -(-missing // empty.shape[1])
    filler = empty.repeat(embeds.shape[0], repeats, 1)[:, :missing]
    return torch.cat([embeds, filler], dim=1)


def compel_prompt_kwargs(
    pipe: Any, prompt: str, negative_prompt: str, *, clip_skip: int = 0
) -> dict[str, Any] | None:
    """Weighted ``prompt_embeds``/``negative_prompt_embeds`` (+ pooled ones for SDXL).

    None when compel is not installed or the pipeline is not an SD 1.x/2.x or SDXL one;
    the caller then passes plain prompts. An empty negative prompt still gets an embedding
    (of ``""``, or zeros where an SDXL model's ``force_zeros_for_empty_prompt`` asks for it,
    as diffusers does) so classifier-free guidance has both halves.
    """
    if not compel_available():
        warn_if_compel_missing(True)
        return None
    family = _prompt_family(pipe, _call_parameters(pipe))
    if family is None:
        log.debug(
            "%s is not an SD/SDXL-style pipeline; using the prompt without compel weighting",
            type(pipe).__name__,
        )
        return None
    _check_clip_skip_depth(pipe, family, clip_skip)
    if clip_skip > 0:
        _ensure_text_model_path(pipe)

    import torch

    negative = negative_prompt or ""
    compels = _cached_compels(pipe, family, max(clip_skip, 0))
    try:
        with torch.no_grad():
            per_encoder = [compel([prompt or "", negative]) for compel in compels]
            length = max(e.shape[1] for e in per_encoder)
            per_encoder = [
                _pad_tokens(compel, e, length)
                for compel, e in zip(compels, per_encoder, strict=True)
            ]
            embeds = torch.cat(per_encoder, dim=-1)
            pooled = None
            if family == "sdxl":
                provider = compels[-1].conditioning_provider
                pooled = provider.get_pooled_embeddings(
                    [_plain_text(prompt or ""), _plain_text(negative)],
                    device=compels[-1].device,
                ).to(embeds.dtype)
    except (ValueError, IndexError) as exc:
        raise InvalidArgument(f"could not apply prompt weighting: {exc}") from exc

    kwargs: dict[str, Any] = {"prompt_embeds": embeds[:1], "negative_prompt_embeds": embeds[1:]}
    if pooled is not None:
        kwargs["pooled_prompt_embeds"] = pooled[:1]
        kwargs["negative_pooled_prompt_embeds"] = pooled[1:]
        force_zeros = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
        if not negative and force_zeros:
            kwargs["negative_prompt_embeds"] = torch.zeros_like(kwargs["negative_prompt_embeds"])
            kwargs["negative_pooled_prompt_embeds"] = torch.zeros_like(pooled[1:])
    return kwargs


# ------------------------------------------------------------------------------ the entry


def build_prompt_kwargs(
    pipe: Any,
    prompt: str,
    negative_prompt: str,
    *,
    use_compel: bool,
    clip_skip: int,
    clip_skip_enabled: bool = True,
) -> dict[str, Any]:
    """The prompt-related keyword arguments for one pipeline call.

    ``clip_skip`` is the effective value (see :func:`effective_clip_skip`); with
    ``clip_skip_enabled`` off (``CLIPSKIP=0``) it is ignored. Returns embeddings from
    :func:`compel_prompt_kwargs` when ``use_compel`` and the pipeline supports them, else
    ``{"prompt": ..., "negative_prompt": ...}`` (no ``negative_prompt`` when it is empty or
    the pipeline takes none) plus ``clip_skip`` where it applies.
    """
    clip_skip = clip_skip if clip_skip_enabled and clip_skip and clip_skip > 0 else 0
    params = _call_parameters(pipe)
    if use_compel:
        embeds = compel_prompt_kwargs(pipe, prompt, negative_prompt, clip_skip=clip_skip)
        if embeds is None:  # SD3 and Flux: weighted here (A1111 syntax), compel not needed
            from .weighted_prompts import weighted_prompt_kwargs

            embeds = weighted_prompt_kwargs(pipe, prompt, negative_prompt, clip_skip=clip_skip)
        if embeds is not None:
            return embeds

    kwargs: dict[str, Any] = {"prompt": prompt or ""}
    if negative_prompt:
        if "negative_prompt" in params or not params:
            kwargs["negative_prompt"] = negative_prompt
        else:
            log.debug("%s takes no negative prompt; ignoring it", type(pipe).__name__)
    skip = clip_skip_kwargs(params, clip_skip, enabled=True) if params else {}
    if skip:
        family = _prompt_family(pipe, params)
        if family is not None:
            _check_clip_skip_depth(pipe, family, clip_skip)
        _ensure_text_model_path(pipe)
    kwargs.update(skip)
    return kwargs
