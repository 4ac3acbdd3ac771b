"""compel prompt weighting for SD 1.x/2.x and SDXL shaped pipelines (``COMPEL=1``)."""

from __future__ import annotations

import importlib.util
import logging
import threading
import weakref
from typing import Any

from diffusers_backend.errors import InvalidArgument
from diffusers_backend.prompts.clip_skip import (
    call_parameters,
    check_clip_skip_depth,
    encoders,
    ensure_text_model_path,
    prompt_family,
)

log = logging.getLogger(__name__)

_warn_lock = threading.Lock()
_warned_missing = False

# pipe -> {cache key: list of Compel}. Building Compel objects is cheap, but each one
# encodes an empty prompt the first time a weight is used; keeping them saves that.
_COMPEL_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], list[Any]]] = (
    weakref.WeakKeyDictionary())

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
    for tokenizer, encoder in encoders(pipe, family):
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
    encoder_ids = tuple(id(enc) for _, enc in encoders(pipe, family))
    device = str(getattr(pipe, "_execution_device", ""))
    key = (family, clip_skip, encoder_ids, device)
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


def _a1111_conditioning(compel: Any, texts: list[str]) -> Any:
    """compel's embeddings of prompts written in A1111's syntax: our parser splits them into
    weighted fragments (``prompts/weighted.py``), compel weights and encodes those."""
    import torch
    from compel.prompt_parser import Conjunction, FlattenedPrompt

    from diffusers_backend.prompts.weighted import parse_weighted_prompt

    tensors = []
    for text in texts:
        parts = [(f.text, float(f.weight)) for f in parse_weighted_prompt(text) if f.text]
        prompt = FlattenedPrompt(parts or [("", 1.0)])
        tensor, _ = compel.build_conditioning_tensor_for_conjunction(Conjunction([prompt]))
        tensors.append(tensor)
    return torch.cat(compel.pad_conditioning_tensors_to_same_length(tensors))


def _pooled_text(prompt: str, syntax: str) -> str:
    if syntax == "a1111":
        from diffusers_backend.prompts.weighted import plain_text

        return plain_text(prompt)
    return _plain_text(prompt)


def compel_prompt_kwargs(
    pipe: Any, prompt: str, negative_prompt: str, *, clip_skip: int = 0, syntax: str = "compel"
) -> dict[str, Any] | None:
    """Weighted ``prompt_embeds``/``negative_prompt_embeds`` (+ pooled ones for SDXL).

    ``syntax`` is ``compel`` (``(red)++``, ``(red)1.3``, ``.and()``...) or ``a1111``
    (``(red:1.3)``, ``(red)``, ``[red]``), for ``SD_EMBED``.

    None when compel is not installed or the pipeline is not an SD 1.x/2.x or SDXL one;
    the caller then passes plain prompts. An empty negative prompt still gets an embedding
    (of ``""``, or zeros where an SDXL model's ``force_zeros_for_empty_prompt`` asks for it,
    as diffusers does) so classifier-free guidance has both halves.
    """
    if not compel_available():
        warn_if_compel_missing(True)
        return None
    family = prompt_family(pipe, call_parameters(pipe))
    if family is None:
        log.debug(
            "%s is not an SD/SDXL-style pipeline; using the prompt without compel weighting",
            type(pipe).__name__,
        )
        return None
    check_clip_skip_depth(pipe, family, clip_skip)
    if clip_skip > 0:
        ensure_text_model_path(pipe)

    import torch

    negative = negative_prompt or ""
    compels = _cached_compels(pipe, family, max(clip_skip, 0))
    try:
        with torch.no_grad():
            texts = [prompt or "", negative]
            per_encoder = [compel(texts) if syntax == "compel"
                           else _a1111_conditioning(compel, texts) for compel in compels]
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
                    [_pooled_text(prompt or "", syntax), _pooled_text(negative, syntax)],
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


